/**
 * The local model as a VS Code language model ("SWE-Spot (local)" in the chat view's model picker).
 *
 * VS Code's chat view resolves a language model for every request before it calls any participant,
 * `@swespot` included, and answers "Language model unavailable" when it has none. Where the chat view
 * lists third-party models (VS Code with a signed-in chat provider), picking this one makes `@swespot`
 * work with nothing but the local model; other extensions can use it through `vscode.lm` too. In an
 * offline editor (code-server 1.139, nobody signed in) the picker offers only a sign-in, so there the
 * chat panel (chatPanel.ts) is the way to chat: see the e2e test's native-chat-view step.
 */
import * as vscode from 'vscode';
import { ChatService } from './chat';
import { questionFromMessages } from './chatText';
import { SwespotServer } from './server';

export const VENDOR = 'swespot';
export const MODEL_ID = 'swespot-local';

export class LocalModelProvider implements vscode.LanguageModelChatProvider {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeLanguageModelChatInformation = this.changed.event;

  constructor(private readonly server: SwespotServer, private readonly chat: ChatService) {}

  /** The server's model or adapter changed: the picker's details follow. */
  refresh(): void {
    this.changed.fire();
  }

  provideLanguageModelChatInformation(): vscode.LanguageModelChatInformation[] {
    const config = vscode.workspace.getConfiguration('swespot');
    const status = this.server.lastStatus;
    return [{
      id: MODEL_ID,
      name: 'SWE-Spot (local)',
      family: 'swespot',
      version: status?.adapter?.version ?? 'base',
      detail: status?.model,
      tooltip: 'The model trained on this repository, running on this machine',
      maxInputTokens: config.get<number>('contextSize', 8192),
      maxOutputTokens: config.get<number>('chatMaxTokens', 512),
      capabilities: {},
    }];
  }

  async provideLanguageModelChatResponse(
    _model: vscode.LanguageModelChatInformation,
    messages: readonly vscode.LanguageModelChatRequestMessage[],
    _options: vscode.ProvideLanguageModelChatResponseOptions,
    progress: vscode.Progress<vscode.LanguageModelResponsePart>,
    token: vscode.CancellationToken,
  ): Promise<void> {
    const question = questionFromMessages(messages);
    await this.chat.ask(question, (delta) => {
      if (delta.kind === 'text') {
        progress.report(new vscode.LanguageModelTextPart(delta.text));
      }
    }, token);
  }

  async provideTokenCount(_model: vscode.LanguageModelChatInformation, text: string | vscode.LanguageModelChatRequestMessage): Promise<number> {
    const value = typeof text === 'string' ? text : questionFromMessages([text]).prompt;
    return Math.ceil(value.length / 4); // an estimate: the server's tokenizer is one request away, and VS Code only budgets with it
  }
}
