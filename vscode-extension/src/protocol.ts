/**
 * The SWE-Spot language server's custom methods and types, mirrored from `lsp_server/protocol.py`
 * (the one place they are defined on the server). Field names are camelCase, as on the wire; optional
 * fields that are null on the server are absent. `tests/vscode/test_extension_contract.py` checks that
 * every method, command and field named here exists in the Python module, so the two cannot drift.
 *
 * Standard LSP types (positions, ranges, WorkspaceEdit) come from vscode-languageserver-protocol.
 */
import type {
  Diagnostic,
  InlineCompletionItem,
  Position,
  Range,
  TextDocumentIdentifier,
  VersionedTextDocumentIdentifier,
  WorkspaceEdit,
} from 'vscode-languageclient';

// ---- method and command names (protocol.py: CHAT, CHAT_DELTA, ...) ---------------------------------
export const CHAT = 'swespot/chat';
export const CHAT_DELTA = 'swespot/chatDelta';
export const TASK = 'swespot/task';
export const INLINE_COMPLETION = 'swespot/inlineCompletion';
export const GET_STATUS = 'swespot/getStatus';
export const STATUS = 'swespot/status';
export const FEEDBACK = 'swespot/feedback';
export const ADAPTERS = 'swespot/adapters';
export const ROLLBACK = 'swespot/rollback';
export const RETRAIN = 'swespot/retrain';

export const CMD_EXPLAIN = 'swespot.explain';
export const CMD_CODE_ACTION = 'swespot.codeAction';
export const CMD_COMPLETION_ACCEPTED = 'swespot.completionAccepted';

export const REQUEST_FAILED = -32803;
export const INVALID_PARAMS = -32602;
export const REQUEST_CANCELLED = -32800;

// ---- chat -----------------------------------------------------------------------------------------
export interface ChatMessage {
  role: 'user' | 'assistant';
  content: string;
}

export interface ChatParams {
  chatId: string;
  prompt: string;
  history: ChatMessage[];
  textDocument?: TextDocumentIdentifier;
  range?: Range;
  maxTokens?: number;
  maxSteps?: number;
}

/** `text` is model output; `tool` is a one-line note of a tool call and its result. */
export interface ChatDelta {
  chatId: string;
  text: string;
  kind: 'text' | 'tool';
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  turns: number;
}

export interface ChatResult {
  chatId: string;
  text: string;
  usage: Usage;
  exit: string; // 'answered' | 'limits'
  adapter?: string;
}

// ---- tasks ----------------------------------------------------------------------------------------
export interface TaskParams {
  request: string;
  textDocuments: VersionedTextDocumentIdentifier[];
  maxSteps?: number;
  taskId?: string;
}

export interface TaskResult {
  taskId: string;
  summary: string;
  exit: string; // 'submitted' | 'limits' | 'cancelled'
  edit: WorkspaceEdit;
  diff: string;
  usage: Usage;
  files: string[];
}

// ---- inline completion ----------------------------------------------------------------------------
/** LSP 3.18's InlineCompletionContext as lsprotocol (the server) has it: Invoked = 1, Automatic = 2
 * (vscode-languageclient 9 still has the proposal's 0/1). */
export interface InlineCompletionContext {
  triggerKind: 1 | 2;
}

export interface InlineCompletionParams {
  textDocument: TextDocumentIdentifier;
  position: Position;
  context?: InlineCompletionContext;
}

export interface InlineCompletionResult {
  items: InlineCompletionItem[];
}

// ---- status ---------------------------------------------------------------------------------------
export interface AdapterInfo {
  version: string;
  commit?: string;
}

export interface DaemonInfo {
  enabled: boolean;
  running: boolean;
  available: boolean;
  phase?: string;
  progress?: number;
  error?: string;
}

export type ServerState = 'starting' | 'loading' | 'ready' | 'generating' | 'error';

export interface StatusParams {
  state: ServerState;
  model?: string;
  adapter?: AdapterInfo;
  daemon: DaemonInfo;
  message?: string;
  swapMs?: number;
  error?: string;
}

// ---- feedback -------------------------------------------------------------------------------------
export interface FeedbackParams {
  id: string;
  kind: 'inlineCompletion' | 'task' | 'chat' | 'codeAction';
  action: 'accepted' | 'rejected' | 'editedAfterAccept';
  uri?: string;
  finalText?: string;
}

// ---- code actions ---------------------------------------------------------------------------------
export interface CodeActionData {
  action: 'explain' | 'fix' | 'writeTest';
  uri: string;
  range: Range;
  version?: number;
  diagnostic?: Diagnostic;
  symbol?: string;
}

// ---- the adapter store ----------------------------------------------------------------------------
export interface AdapterVersionInfo {
  version: string;
  usable: boolean;
  commit?: string;
  publishedAt?: number;
  problem?: string;
  /** Its evaluation report (report.html of `swespot specialize`), when on disk. */
  report?: string;
}

export interface AdaptersResult {
  current?: string;
  serving?: string;
  versions: AdapterVersionInfo[];
}

export interface RollbackParams {
  version: string;
}

export interface RetrainResult {
  message: string;
}
