/** Chat plumbing that needs no editor: routing streamed deltas, history, and file references in replies. */
import type { ChatDelta, ChatMessage } from './protocol';

/**
 * Routes `swespot/chatDelta` notifications to the chat that asked (by chatId). Deltas of chats nobody
 * listens to (a chat already answered or cancelled) are dropped and counted.
 */
export class DeltaRouter {
  private readonly sinks = new Map<string, (delta: ChatDelta) => void>();
  dropped = 0;

  listen(chatId: string, sink: (delta: ChatDelta) => void): { dispose(): void } {
    if (this.sinks.has(chatId)) {
      throw new Error(`chat ${chatId} already has a listener`);
    }
    this.sinks.set(chatId, sink);
    return { dispose: () => this.sinks.delete(chatId) };
  }

  deliver(delta: ChatDelta): boolean {
    const sink = this.sinks.get(delta.chatId);
    if (!sink) {
      this.dropped += 1;
      return false;
    }
    sink(delta);
    return true;
  }

  get listening(): number {
    return this.sinks.size;
  }
}

let counter = 0;
/** A chat id unique within this window (the server only needs it to name the delta stream). */
export function newChatId(prefix = 'chat'): string {
  counter += 1;
  return `${prefix}-${Date.now().toString(36)}-${counter}`;
}

/** Earlier turns as the server wants them: only non-empty user and assistant text. */
export function toHistory(turns: { role: 'user' | 'assistant'; content: string }[]): ChatMessage[] {
  return turns.filter((t) => t.content.trim() !== '').map((t) => ({ role: t.role, content: t.content }));
}

export interface FileReference {
  /** Repository-relative path as written in the reply. */
  path: string;
  /** 1-based line, when the reply named one (`path:12` or `path:12-14` or `path#L12`). */
  line?: number;
  endLine?: number;
  /** Offsets of the whole reference (path and line) in the text. */
  start: number;
  end: number;
}

// a relative path with at least one dot-extension, optionally followed by :LINE[-LINE] or #LLINE
const REFERENCE = /(?<![\w/.-])((?:[\w.-]+\/)*[\w.-]*\.[A-Za-z0-9]+)(?::(\d+)(?:-(\d+))?|#L(\d+))?/g;

/**
 * The file references in a reply that name files of the repository (`exists(path)` decides; a word
 * like `e.g.` or a file the repository lacks is not a reference). The same file may appear more than
 * once; each mention is returned in order.
 */
export function findFileReferences(text: string, exists: (path: string) => boolean): FileReference[] {
  const out: FileReference[] = [];
  for (const match of text.matchAll(REFERENCE)) {
    const path = match[1].replace(/^\.\//, '');
    if (!exists(path)) {
      continue;
    }
    const lineText = match[2] ?? match[4];
    const ref: FileReference = { path, start: match.index ?? 0, end: (match.index ?? 0) + match[0].length };
    if (lineText) {
      ref.line = Number(lineText);
      if (match[3]) {
        ref.endLine = Number(match[3]);
      }
    }
    out.push(ref);
  }
  return out;
}

/** Each referenced file once (first mention wins), for a "references" list. */
export function uniqueReferences(refs: FileReference[]): FileReference[] {
  const seen = new Set<string>();
  return refs.filter((r) => {
    const key = `${r.path}:${r.line ?? ''}`;
    if (seen.has(key)) {
      return false;
    }
    seen.add(key);
    return true;
  });
}

/** A message as VS Code's language model API hands it over: a role (User 1, Assistant 2) and parts. */
export interface ModelMessage {
  role: number;
  content: ReadonlyArray<unknown>;
}

/** The text of a message's text parts (tool calls and results are left out). */
export function messageText(message: ModelMessage): string {
  return message.content
    .map((part) => (typeof part === 'object' && part !== null && typeof (part as { value?: unknown }).value === 'string' ? (part as { value: string }).value : ''))
    .join('');
}

/** A language-model request as a chat question: the last user message is the prompt, the rest history. */
export function questionFromMessages(messages: readonly ModelMessage[]): { prompt: string; history: ChatMessage[] } {
  const turns = messages.map((m) => ({ role: m.role === 2 ? ('assistant' as const) : ('user' as const), content: messageText(m) }));
  let last = turns.length - 1;
  while (last >= 0 && (turns[last].role !== 'user' || !turns[last].content.trim())) {
    last -= 1;
  }
  if (last < 0) {
    throw new Error('the request has no user message to answer');
  }
  return { prompt: turns[last].content, history: toHistory(turns.slice(0, last)) };
}
