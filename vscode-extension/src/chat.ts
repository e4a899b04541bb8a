/**
 * Chat with the repository's model: one service that sends `swespot/chat` and streams its deltas, and
 * two faces for it: the `@swespot` participant of VS Code's chat view, and a webview chat panel (see
 * chatPanel.ts) for editors whose chat view is not available (it needs a signed-in chat provider).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as vscode from 'vscode';
import * as P from './protocol';
import { findFileReferences, newChatId, toHistory, uniqueReferences } from './chatText';
import { isCancellation, SwespotServer } from './server';

export interface Question {
  prompt: string;
  history: P.ChatMessage[];
  /** The editor the question is about (its file, and its selection if any). */
  editor?: { uri: vscode.Uri; selection?: vscode.Range };
}

export class ChatService {
  constructor(private readonly server: SwespotServer) {}

  /** Ask; `onDelta` sees the reply as it is written. Cancelling the token stops the generation. */
  async ask(question: Question, onDelta: (delta: P.ChatDelta) => void, token?: vscode.CancellationToken, chatId = newChatId()): Promise<P.ChatResult> {
    const params: P.ChatParams = { chatId, prompt: question.prompt, history: question.history };
    if (question.editor && question.editor.uri.scheme === 'file') {
      params.textDocument = { uri: question.editor.uri.toString() };
      const sel = question.editor.selection;
      if (sel && !sel.isEmpty) {
        params.range = { start: { line: sel.start.line, character: sel.start.character }, end: { line: sel.end.line, character: sel.end.character } };
      }
    }
    const listening = this.server.deltas.listen(chatId, onDelta);
    try {
      return await this.server.request<P.ChatResult>(P.CHAT, params, token);
    } finally {
      listening.dispose();
    }
  }

  feedback(chatId: string, helpful: boolean): void {
    this.server.notify(P.FEEDBACK, { id: chatId, kind: 'chat', action: helpful ? 'accepted' : 'rejected' } satisfies P.FeedbackParams);
  }
}

/** The repository's root folder and whether a relative path names a file in it. */
export function repoFiles(): { root?: vscode.Uri; exists(rel: string): boolean; uri(rel: string): vscode.Uri | undefined } {
  const root = vscode.workspace.workspaceFolders?.[0]?.uri;
  return {
    root,
    exists: (rel) => {
      if (!root || root.scheme !== 'file' || path.isAbsolute(rel) || rel.split('/').includes('..')) {
        return false;
      }
      try {
        return fs.statSync(path.join(root.fsPath, rel)).isFile();
      } catch {
        return false;
      }
    },
    uri: (rel) => (root ? vscode.Uri.joinPath(root, rel) : undefined),
  };
}

interface TurnLike {
  participant: string;
}

/** The participant's earlier turns (only its own conversation) as the server's history. */
export function participantHistory(history: readonly TurnLike[], participantId: string): P.ChatMessage[] {
  const turns: { role: 'user' | 'assistant'; content: string }[] = [];
  for (const turn of history) {
    if (turn.participant !== participantId) {
      continue;
    }
    if (turn instanceof vscode.ChatRequestTurn) {
      turns.push({ role: 'user', content: turn.prompt });
    } else if (turn instanceof vscode.ChatResponseTurn) {
      const text = turn.response
        .map((part) => (part instanceof vscode.ChatResponseMarkdownPart ? part.value.value : ''))
        .join('');
      turns.push({ role: 'assistant', content: text });
    }
  }
  return toHistory(turns);
}

export const PARTICIPANT_ID = 'swespot.chat';

/** `@swespot` in VS Code's chat view: streamed, cancellable, with clickable file references. */
export function registerParticipant(chat: ChatService, extensionUri: vscode.Uri): vscode.Disposable {
  const handler: vscode.ChatRequestHandler = async (request, context, stream, token) => {
    const files = repoFiles();
    const reference = request.references.find((r) => r.value instanceof vscode.Uri || r.value instanceof vscode.Location);
    let editor: Question['editor'];
    if (reference?.value instanceof vscode.Location) {
      editor = { uri: reference.value.uri, selection: reference.value.range };
    } else if (reference?.value instanceof vscode.Uri) {
      editor = { uri: reference.value };
    } else if (vscode.window.activeTextEditor) {
      editor = { uri: vscode.window.activeTextEditor.document.uri, selection: vscode.window.activeTextEditor.selection };
    }
    const chatId = newChatId();
    try {
      const result = await chat.ask(
        { prompt: request.prompt, history: participantHistory(context.history, PARTICIPANT_ID), editor },
        (delta) => (delta.kind === 'tool' ? stream.progress(delta.text) : stream.markdown(delta.text)),
        token,
        chatId,
      );
      for (const ref of uniqueReferences(findFileReferences(result.text, files.exists))) {
        const uri = files.uri(ref.path);
        if (uri) {
          stream.reference(ref.line ? new vscode.Location(uri, new vscode.Position(ref.line - 1, 0)) : uri);
        }
      }
      return { metadata: { chatId, exit: result.exit, usage: result.usage, adapter: result.adapter } };
    } catch (err) {
      if (isCancellation(err) || token.isCancellationRequested) {
        return { metadata: { chatId, exit: 'cancelled' } };
      }
      return { errorDetails: { message: err instanceof Error ? err.message : String(err) }, metadata: { chatId } };
    }
  };
  const participant = vscode.chat.createChatParticipant(PARTICIPANT_ID, handler);
  participant.iconPath = vscode.Uri.joinPath(extensionUri, 'media', 'icon.svg');
  const feedback = participant.onDidReceiveFeedback((f) => {
    const chatId = (f.result.metadata as { chatId?: string } | undefined)?.chatId;
    if (chatId) {
      chat.feedback(chatId, f.kind === vscode.ChatResultFeedbackKind.Helpful);
    }
  });
  return vscode.Disposable.from(participant, feedback);
}
