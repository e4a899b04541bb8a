/** Ghost text from the server (`swespot/inlineCompletion`), and the feedback when one is accepted. */
import * as vscode from 'vscode';
import * as P from './protocol';
import { isCancellation, SwespotServer } from './server';

/** VS Code's trigger kind (Invoke 0, Automatic 1) as LSP's (Invoked 1, Automatic 2). */
export function lspTriggerKind(kind: vscode.InlineCompletionTriggerKind): 1 | 2 {
  return kind === vscode.InlineCompletionTriggerKind.Invoke ? 1 : 2;
}

export class InlineProvider implements vscode.InlineCompletionItemProvider {
  constructor(private readonly server: SwespotServer, private readonly log: vscode.LogOutputChannel) {}

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[]> {
    if (!vscode.workspace.getConfiguration('swespot').get<boolean>('inlineCompletion.enabled', true) || document.uri.scheme !== 'file') {
      return [];
    }
    const client = this.server.client;
    if (!client || !client.isRunning()) {
      return [];
    }
    const params: P.InlineCompletionParams = {
      textDocument: { uri: document.uri.toString() },
      position: { line: position.line, character: position.character },
      context: { triggerKind: lspTriggerKind(context.triggerKind) },
    };
    try {
      const result = await client.sendRequest<P.InlineCompletionResult>(P.INLINE_COMPLETION, params, token);
      return result.items.map((item) => {
        const insert = typeof item.insertText === 'string' ? item.insertText : new vscode.SnippetString(item.insertText.value);
        const range = item.range ? client.protocol2CodeConverter.asRange(item.range) : new vscode.Range(position, position);
        const out = new vscode.InlineCompletionItem(insert, range);
        if (item.command) {
          out.command = { title: item.command.title, command: item.command.command, arguments: item.command.arguments };
        }
        return out;
      });
    } catch (err) {
      if (!isCancellation(err)) {
        this.log.warn(`inline completion: ${err instanceof Error ? err.message : String(err)}`);
      }
      return [];
    }
  }
}

/** The command the server attaches to its items: VS Code runs it when the user accepts the ghost text. */
export function completionAccepted(server: SwespotServer, completionId: unknown): void {
  if (typeof completionId === 'string') {
    server.notify(P.FEEDBACK, { id: completionId, kind: 'inlineCompletion', action: 'accepted' } satisfies P.FeedbackParams);
  }
}
