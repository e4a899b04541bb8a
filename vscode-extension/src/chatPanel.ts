/**
 * The chat panel: a webview that talks to the same ChatService as the `@swespot` participant. It is
 * there because VS Code's own chat view only opens once a chat provider is signed in, which an offline
 * editor (code-server, or VS Code without an account) never is. Streams the reply, can be stopped, keeps
 * the conversation as history, and turns file references in replies into links that open the file.
 */
import * as crypto from 'crypto';
import * as vscode from 'vscode';
import * as P from './protocol';
import { ChatService, Question, repoFiles } from './chat';
import { findFileReferences, newChatId } from './chatText';
import { errorText, isCancellation } from './server';

/** Messages from the webview. */
export type FromPanel =
  | { type: 'send'; text: string }
  | { type: 'stop' }
  | { type: 'clear' }
  | { type: 'open'; path: string; line?: number };

/** Messages to the webview. */
export type ToPanel =
  | { type: 'user'; text: string }
  | { type: 'start'; id: string }
  | { type: 'delta'; id: string; kind: 'text' | 'tool'; text: string }
  | { type: 'end'; id: string; text: string; exit: string; refs: { start: number; end: number; path: string; line?: number }[]; footer: string }
  | { type: 'error'; id: string; message: string }
  | { type: 'cleared' };

export class ChatPanel implements vscode.Disposable {
  static readonly viewType = 'swespot.chatPanel';
  private panel: vscode.WebviewPanel | undefined;
  private history: P.ChatMessage[] = [];
  private running: vscode.CancellationTokenSource | undefined;
  private lastEditor: vscode.TextEditor | undefined = vscode.window.activeTextEditor;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(private readonly chat: ChatService, private readonly extensionUri: vscode.Uri, private readonly log: vscode.LogOutputChannel) {
    // focusing the panel clears activeTextEditor: remember the editor the user was in
    this.disposables.push(vscode.window.onDidChangeActiveTextEditor((e) => e && (this.lastEditor = e)));
  }

  show(): vscode.WebviewPanel {
    if (this.panel) {
      this.panel.reveal(undefined, true);
      return this.panel;
    }
    const panel = vscode.window.createWebviewPanel(ChatPanel.viewType, 'SWE-Spot Chat', { viewColumn: vscode.ViewColumn.Beside, preserveFocus: false }, {
      enableScripts: true,
      retainContextWhenHidden: true,
      localResourceRoots: [vscode.Uri.joinPath(this.extensionUri, 'media')],
    });
    panel.iconPath = vscode.Uri.joinPath(this.extensionUri, 'media', 'icon.svg');
    panel.webview.html = this.html(panel.webview);
    panel.webview.onDidReceiveMessage((m: FromPanel) => this.received(m), undefined, this.disposables);
    panel.onDidDispose(() => {
      this.running?.cancel();
      this.panel = undefined;
    }, undefined, this.disposables);
    this.panel = panel;
    return panel;
  }

  /** Ask from outside the panel (the Explain command, tests): shows the panel and streams there. */
  async ask(prompt: string, editor?: Question['editor']): Promise<P.ChatResult | undefined> {
    this.show();
    return this.run(prompt, editor);
  }

  private post(message: ToPanel): void {
    void this.panel?.webview.postMessage(message);
  }

  private async received(message: FromPanel): Promise<void> {
    switch (message.type) {
      case 'send': {
        const editor = this.lastEditor && !this.lastEditor.document.isClosed
          ? { uri: this.lastEditor.document.uri, selection: this.lastEditor.selection }
          : undefined;
        await this.run(message.text, editor);
        break;
      }
      case 'stop':
        this.running?.cancel();
        break;
      case 'clear':
        this.running?.cancel();
        this.history = [];
        this.post({ type: 'cleared' });
        break;
      case 'open': {
        const uri = repoFiles().uri(message.path);
        if (uri) {
          const line = Math.max(0, (message.line ?? 1) - 1);
          await vscode.window.showTextDocument(uri, { selection: new vscode.Range(line, 0, line, 0), viewColumn: vscode.ViewColumn.One });
        }
        break;
      }
    }
  }

  private async run(prompt: string, editor?: Question['editor']): Promise<P.ChatResult | undefined> {
    const text = prompt.trim();
    if (!text) {
      return undefined;
    }
    if (this.running) {
      void vscode.window.showInformationMessage('SWE-Spot is still answering; stop it first.');
      return undefined;
    }
    const id = newChatId();
    const tokens = new vscode.CancellationTokenSource();
    this.running = tokens;
    this.post({ type: 'user', text });
    this.post({ type: 'start', id });
    try {
      const result = await this.chat.ask({ prompt: text, history: this.history, editor }, (d) => this.post({ type: 'delta', id, kind: d.kind, text: d.text }), tokens.token, id);
      this.history = [...this.history, { role: 'user', content: text }, { role: 'assistant', content: result.text }];
      const files = repoFiles();
      const refs = findFileReferences(result.text, files.exists).map((r) => ({ start: r.start, end: r.end, path: r.path, line: r.line }));
      const footer = `${result.exit === 'limits' ? 'stopped at its limits · ' : ''}${result.usage.completionTokens} tokens · ${result.adapter ? `adapter ${result.adapter}` : 'base model'}`;
      this.post({ type: 'end', id, text: result.text, exit: result.exit, refs, footer });
      return result;
    } catch (err) {
      const message = isCancellation(err) || tokens.token.isCancellationRequested ? 'stopped' : errorText(err);
      this.log.warn(`chat ${id}: ${message}`);
      this.post({ type: 'error', id, message });
      return undefined;
    } finally {
      this.running = undefined;
      tokens.dispose();
    }
  }

  private html(webview: vscode.Webview): string {
    const nonce = crypto.randomBytes(16).toString('base64');
    const media = (file: string) => webview.asWebviewUri(vscode.Uri.joinPath(this.extensionUri, 'media', file));
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src ${webview.cspSource}; script-src 'nonce-${nonce}';">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${media('chat.css')}">
<title>SWE-Spot Chat</title>
</head>
<body>
<main id="log" aria-live="polite"><p class="hint">Ask about this repository. The model runs on this machine; nothing leaves it.</p></main>
<form id="ask">
  <textarea id="prompt" rows="3" placeholder="Ask SWE-Spot (Enter to send, Shift+Enter for a new line)" aria-label="Ask SWE-Spot"></textarea>
  <div class="buttons">
    <button id="send" type="submit">Send</button>
    <button id="stop" type="button" disabled>Stop</button>
    <button id="clear" type="button">New chat</button>
  </div>
</form>
<script nonce="${nonce}" src="${media('chat.js')}"></script>
</body>
</html>`;
  }

  dispose(): void {
    this.running?.cancel();
    this.panel?.dispose();
    this.disposables.forEach((d) => d.dispose());
  }
}
