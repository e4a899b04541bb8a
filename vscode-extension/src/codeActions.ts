/**
 * The server's code actions (explain, fix a diagnostic, write a test), routed so that nothing the agent
 * writes is applied unseen: actions the server would resolve into an edit run through the review
 * instead, and `swespot.explain` answers in the chat panel.
 */
import type * as vscode from 'vscode';
import type { Middleware } from 'vscode-languageclient/node';
import * as P from './protocol';

export const REVIEW_CODE_ACTION = 'swespot.reviewCodeAction';

interface ActionLike {
  title: string;
  edit?: unknown;
  command?: vscode.Command;
  data?: unknown;
}

function isCodeActionData(data: unknown): data is P.CodeActionData {
  const d = data as Partial<P.CodeActionData> | undefined;
  return !!d && typeof d.uri === 'string' && (d.action === 'fix' || d.action === 'writeTest' || d.action === 'explain');
}

/**
 * An action the server left for `codeAction/resolve` (its `data` names a fix or a test) becomes one
 * that runs our review command instead; the rest pass unchanged. Returns whether it was rewritten.
 */
export function routeThroughReview(action: ActionLike): boolean {
  if (action.edit || action.command || !isCodeActionData(action.data) || action.data.action === 'explain') {
    return false;
  }
  action.command = { title: action.title, command: REVIEW_CODE_ACTION, arguments: [action.data] };
  return true;
}

export interface CodeActionHandlers {
  explain(data: P.CodeActionData): Promise<unknown>;
  review(data: P.CodeActionData): Promise<unknown>;
}

export function codeActionMiddleware(handlers: CodeActionHandlers): Middleware {
  const routed = new WeakSet<object>();
  return {
    provideCodeActions: async (document, range, context, token, next) => {
      const actions = await next(document, range, context, token);
      for (const action of actions ?? []) {
        if ('title' in action && typeof action.title === 'string' && 'kind' in action && routeThroughReview(action as ActionLike)) {
          routed.add(action);
        }
      }
      return actions;
    },
    resolveCodeAction: (item, token, next) => (routed.has(item) ? item : next(item, token)),
    executeCommand: (command, args, next) => {
      if (command === P.CMD_EXPLAIN && isCodeActionData(args[0])) {
        return handlers.explain(args[0]);
      }
      if (command === P.CMD_CODE_ACTION && isCodeActionData(args[0])) {
        return handlers.review(args[0]);
      }
      return next(command, args);
    },
  };
}
