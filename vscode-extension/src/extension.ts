/**
 * SWE-Spot Local for VS Code. `activate` only wires things up: the language server, the chat (the
 * `@swespot` participant and the chat panel), ghost text, reviewed agent edits, code actions, and the
 * status bar item with its menu. Each part lives in its own module and gets what it needs passed in.
 */
import * as vscode from 'vscode';
import * as P from './protocol';
import { ChatService, registerParticipant } from './chat';
import { ChatPanel } from './chatPanel';
import { codeActionMiddleware, REVIEW_CODE_ACTION } from './codeActions';
import { completionAccepted, InlineProvider } from './inline';
import { LocalModelProvider, VENDOR } from './languageModel';
import { SwespotServer } from './server';
import { openReport, retrain, rollback, setTraining, settingsTarget, showStatusMenu, StatusBar } from './statusBar';
import { TaskReviewer } from './tasks';

/** What the extension exports (its in-editor tests use it; so could other extensions). */
export interface SwespotApi {
  server: SwespotServer;
  chat: ChatService;
  panel: ChatPanel;
  reviewer: TaskReviewer;
  statusBar: StatusBar;
  inline: InlineProvider;
  /** Resolves with each status the server sends (or the launch failure), for waiting on a state. */
  onStatus: vscode.Event<P.StatusParams | undefined>;
}

let server: SwespotServer | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<SwespotApi> {
  const log = vscode.window.createOutputChannel('SWE-Spot', { log: true });
  const statusBar = new StatusBar();
  const statusEvents = new vscode.EventEmitter<P.StatusParams | undefined>();
  let panel: ChatPanel | undefined;
  let reviewer: TaskReviewer | undefined;
  const middleware = codeActionMiddleware({
    explain: async (data) => panel?.ask('Explain what this code does and why.', { uri: vscode.Uri.parse(data.uri), selection: toRange(data.range) }),
    review: async (data) => reviewer?.runCodeAction(data),
  });
  server = new SwespotServer(log, middleware, {
    onStatus: (status) => {
      statusBar.render(status);
      statusEvents.fire(status);
    },
    onFailure: (message, error) => {
      statusBar.fail(message, error);
      statusEvents.fire(undefined);
      const fix = error?.fix;
      const action = fix === 'chooseServer' ? 'Choose swespot…' : fix === 'choosePython' ? 'Choose Python…' : fix === 'chooseModel' ? 'Choose model…' : undefined;
      void vscode.window.showErrorMessage(`SWE-Spot: ${message}`, ...(action ? [action] : []), 'Show logs').then((choice) => {
        if (choice === 'Show logs') {
          log.show();
        } else if (choice) {
          void vscode.commands.executeCommand(fix === 'chooseServer' ? 'swespot.chooseServer' : fix === 'choosePython' ? 'swespot.choosePython' : 'swespot.chooseModel');
        }
      });
    },
  });
  const chat = new ChatService(server);
  panel = new ChatPanel(chat, context.extensionUri, log);
  reviewer = new TaskReviewer(server, log);
  const srv = server;
  const rev = reviewer;
  const pnl = panel;
  const inline = new InlineProvider(srv, log);

  context.subscriptions.push(
    log, statusBar, statusEvents, srv, pnl, rev,
    vscode.languages.registerInlineCompletionItemProvider({ scheme: 'file' }, inline),
    vscode.commands.registerCommand(P.CMD_COMPLETION_ACCEPTED, (id: unknown) => completionAccepted(srv, id)),
    vscode.commands.registerCommand(REVIEW_CODE_ACTION, (data: P.CodeActionData) => rev.runCodeAction(data)),
    vscode.commands.registerCommand('swespot.openChat', () => pnl.show()),
    vscode.commands.registerCommand('swespot.ask', (prompt?: string) => pnl.ask(prompt ?? '')),
    vscode.commands.registerCommand('swespot.doTask', async (request?: string) => {
      request ??= await vscode.window.showInputBox({ title: 'SWE-Spot: Do this…', prompt: 'What should SWE-Spot change? You review the diff before anything is applied.', ignoreFocusOut: true });
      return request?.trim() ? rev.runTask(request.trim()) : undefined;
    }),
    vscode.commands.registerCommand('swespot.acceptChange', () => rev.accept()),
    vscode.commands.registerCommand('swespot.rejectChange', () => rev.reject()),
    vscode.commands.registerCommand('swespot.explainSelection', () => {
      const editor = vscode.window.activeTextEditor;
      if (!editor) {
        return vscode.window.showInformationMessage('Select some code to explain first.');
      }
      return pnl.ask('Explain what this code does and why.', { uri: editor.document.uri, selection: editor.selection });
    }),
    vscode.commands.registerCommand('swespot.showStatus', () => showStatusMenu(srv, statusBar, log)),
    vscode.commands.registerCommand('swespot.pauseTraining', () => setTraining(false)),
    vscode.commands.registerCommand('swespot.resumeTraining', () => setTraining(true)),
    vscode.commands.registerCommand('swespot.retrain', () => retrain(srv)),
    vscode.commands.registerCommand('swespot.rollback', (version?: string) => rollback(srv, version)),
    vscode.commands.registerCommand('swespot.openReport', () => openReport(srv)),
    vscode.commands.registerCommand('swespot.restartServer', () => srv.restart()),
    vscode.commands.registerCommand('swespot.showLogs', () => log.show()),
    vscode.commands.registerCommand('swespot.chooseServer', () => chooseFile('server.path', 'Use this swespot', 'Choose the swespot executable (the .venv/bin/swespot of your SWE-Spot Local checkout)')),
    vscode.commands.registerCommand('swespot.choosePython', () => chooseFile('server.python', 'Use this Python', 'Choose the Python that has SWE-Spot Local installed')),
    vscode.commands.registerCommand('swespot.chooseModel', () => chooseFile('model', 'Use this model', 'Choose the model (a .gguf file)', { 'GGUF model': ['gguf'] })),
  );
  // the chat view: the @swespot participant, and the local model it needs there (see languageModel.ts);
  // where either API is missing the chat panel still works
  try {
    const models = new LocalModelProvider(srv, chat);
    context.subscriptions.push(
      vscode.lm.registerLanguageModelChatProvider(VENDOR, models),
      statusEvents.event(() => models.refresh()),
      registerParticipant(chat, context.extensionUri),
    );
    void vscode.lm.selectChatModels({ vendor: VENDOR }).then((found) => log.info(`language models of vendor ${VENDOR}: ${found.map((m) => m.name).join(', ') || 'none'}`));
  } catch (err) {
    log.warn(`VS Code's chat view is not available here (${err instanceof Error ? err.message : String(err)}); use SWE-Spot: Open Chat`);
  }
  void srv.start();
  return { server: srv, chat, panel: pnl, reviewer: rev, statusBar, inline, onStatus: statusEvents.event };
}

export function deactivate(): Thenable<void> | undefined {
  return server?.stop();
}

function toRange(r: P.CodeActionData['range']): vscode.Range {
  return new vscode.Range(r.start.line, r.start.character, r.end.line, r.end.character);
}

async function chooseFile(key: string, openLabel: string, title: string, filters?: Record<string, string[]>): Promise<void> {
  const picked = await vscode.window.showOpenDialog({ title, openLabel, canSelectMany: false, filters });
  if (picked?.[0]) {
    await vscode.workspace.getConfiguration('swespot').update(key, picked[0].fsPath, settingsTarget());
  }
}
