/**
 * An agent task's WorkspaceEdit as the files it would produce, so the user can review a diff before
 * anything is applied. Pure: works on LSP types and strings (JS strings are UTF-16, LSP's default
 * position encoding, which the server uses).
 */
import type { TextEdit, WorkspaceEdit } from 'vscode-languageclient';

export interface FileChange {
  uri: string;
  kind: 'modify' | 'create' | 'delete';
  before: string;
  after: string;
  /** The document version the edit was made for (null: the file as it is on disk). */
  version: number | null;
}

export class EditError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EditError';
  }
}

function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10 /* \n */) {
      starts.push(i + 1);
    } else if (c === 13 /* \r */ && text.charCodeAt(i + 1) !== 10) {
      starts.push(i + 1);
    }
  }
  return starts;
}

function offsetAt(text: string, starts: number[], line: number, character: number): number {
  if (line >= starts.length) {
    return text.length;
  }
  const start = starts[line];
  let end = line + 1 < starts.length ? starts[line + 1] : text.length;
  // the line's content ends before its terminator
  while (end > start && (text.charCodeAt(end - 1) === 10 || text.charCodeAt(end - 1) === 13)) {
    end -= 1;
  }
  return Math.min(start + character, end);
}

/** Apply TextEdits the way an editor does: every range refers to the original text. */
export function applyTextEdits(text: string, edits: TextEdit[]): string {
  const starts = lineStarts(text);
  const spans = edits.map((e, order) => ({
    start: offsetAt(text, starts, e.range.start.line, e.range.start.character),
    end: offsetAt(text, starts, e.range.end.line, e.range.end.character),
    newText: e.newText,
    order,
  }));
  spans.sort((a, b) => a.start - b.start || a.order - b.order);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i].start < spans[i - 1].end) {
      throw new EditError('the edit has overlapping ranges');
    }
  }
  let out = '';
  let at = 0;
  for (const span of spans) {
    out += text.slice(at, span.start) + span.newText;
    at = span.end;
  }
  return out + text.slice(at);
}

/**
 * The files a WorkspaceEdit would change, with their content before and after. `read(uri)` returns a
 * file's current text (the open document's, else the disk's), or undefined when it does not exist.
 */
export function planChanges(edit: WorkspaceEdit, read: (uri: string) => string | undefined): FileChange[] {
  const byUri = new Map<string, FileChange>();
  const current = (uri: string): FileChange => {
    let change = byUri.get(uri);
    if (!change) {
      const text = read(uri);
      if (text === undefined) {
        throw new EditError(`the edit changes ${uri}, which does not exist`);
      }
      change = { uri, kind: 'modify', before: text, after: text, version: null };
      byUri.set(uri, change);
    }
    return change;
  };
  for (const op of edit.documentChanges ?? []) {
    if ('kind' in op) {
      if (op.kind === 'create') {
        const existing = byUri.get(op.uri);
        const exists = existing ? existing.kind !== 'delete' : read(op.uri) !== undefined;
        if (exists && !op.options?.overwrite) {
          if (op.options?.ignoreIfExists) {
            continue;
          }
          throw new EditError(`the edit creates ${op.uri}, which already exists`);
        }
        const original = existing ? (existing.kind === 'create' ? undefined : existing.before) : read(op.uri);
        byUri.set(op.uri, { uri: op.uri, kind: original === undefined ? 'create' : 'modify', before: original ?? '', after: '', version: null });
      } else if (op.kind === 'delete') {
        const existing = byUri.get(op.uri);
        if (existing?.kind === 'create') {
          byUri.delete(op.uri); // created and deleted again: nothing happens
          continue;
        }
        if (!existing && read(op.uri) === undefined) {
          if (op.options?.ignoreIfNotExists) {
            continue;
          }
          throw new EditError(`the edit deletes ${op.uri}, which does not exist`);
        }
        const change = current(op.uri);
        change.kind = 'delete';
        change.after = '';
      } else {
        throw new EditError(`the edit renames ${op.oldUri}; renames are not supported`);
      }
    } else {
      const change = current(op.textDocument.uri);
      change.version = op.textDocument.version;
      change.after = applyTextEdits(change.after, op.edits as TextEdit[]);
    }
  }
  for (const [uri, edits] of Object.entries(edit.changes ?? {})) {
    const change = current(uri);
    change.after = applyTextEdits(change.after, edits);
  }
  return [...byUri.values()].filter((c) => c.kind !== 'modify' || c.before !== c.after);
}

/**
 * The changes whose document moved on since the edit was made: `versionOf(uri)` is the open
 * document's version now (undefined when it is not open). Such an edit must not be applied.
 */
export function staleChanges(changes: FileChange[], versionOf: (uri: string) => number | undefined): FileChange[] {
  return changes.filter((c) => c.version !== null && versionOf(c.uri) !== c.version);
}

/** "calc/ops.py, tests/test_ops.py (new)" */
export function describeChanges(changes: FileChange[], rel: (uri: string) => string): string {
  return changes.map((c) => rel(c.uri) + (c.kind === 'create' ? ' (new)' : c.kind === 'delete' ? ' (deleted)' : '')).join(', ');
}
