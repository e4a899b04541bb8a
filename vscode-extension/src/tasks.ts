/**
 * Agent tasks ("SWE-Spot: Do this…"), fixes and new tests from code actions: the server returns its
 * change as a WorkspaceEdit and writes nothing; here the change is shown as a diff for review, applied
 * as one undoable workspace edit on accept, and dropped on reject. Either way the server hears what the
 * user decided (swespot/feedback), which becomes training signal.
 */
import * as fs from 'fs';
import * as vscode from 'vscode';
import * as P from './protocol';
import { describeChanges, EditError, FileChange, planChanges, staleChanges } from './edits';
import { errorText, isCancellation, SwespotServer } from './server';

export const PROPOSED_SCHEME = 'swespot-proposed';
const REVIEWING = 'swespot.reviewing';

export type Decision = 'accepted' | 'rejected' | 'superseded';

interface Review {
  result: P.TaskResult;
  kind: P.FeedbackParams['kind'];
  changes: FileChange[];
  decide(decision: Decision): void;
}

function readText(uri: string): string | undefined {
  const parsed = vscode.Uri.parse(uri);
  const open = vscode.workspace.textDocuments.find((d) => d.uri.toString() === parsed.toString());
  if (open) {
    return open.getText();
  }
  try {
    return fs.readFileSync(parsed.fsPath, 'utf8');
  } catch {
    return undefined;
  }
}

export class TaskReviewer implements vscode.Disposable, vscode.TextDocumentContentProvider {
  private review: Review | undefined;
  private readonly contents = new Map<string, string>();
  private readonly disposables: vscode.Disposable[] = [];
  /** Fired with each decision (tests and the log listen). */
  private readonly decided = new vscode.EventEmitter<{ taskId: string; decision: Decision }>();
  readonly onDidDecide = this.decided.event;

  /** Accepted changes, by file, until the user saves that file: an edited one is training signal. */
  private readonly accepted = new Map<string, { taskId: string; kind: P.FeedbackParams['kind']; text: string }>();

  constructor(private readonly server: SwespotServer, private readonly log: vscode.LogOutputChannel) {
    this.disposables.push(
      vscode.workspace.registerTextDocumentContentProvider(PROPOSED_SCHEME, this),
      this.decided,
      vscode.workspace.onDidSaveTextDocument((doc) => this.savedAfterAccept(doc)),
    );
  }

  /** The first save of a file an accepted change touched: if the user changed what was accepted, say so. */
  private savedAfterAccept(doc: vscode.TextDocument): void {
    const key = doc.uri.toString();
    const accepted = this.accepted.get(key);
    if (!accepted) {
      return;
    }
    this.accepted.delete(key);
    if (doc.getText() !== accepted.text) {
      this.server.notify(P.FEEDBACK, { id: accepted.taskId, kind: accepted.kind, action: 'editedAfterAccept', uri: key, finalText: doc.getText() } satisfies P.FeedbackParams);
    }
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.contents.get(uri.toString()) ?? '';
  }

  /** Ask for a change, then review it. */
  async runTask(request: string): Promise<Decision | undefined> {
    const textDocuments = vscode.workspace.textDocuments
      .filter((d) => d.uri.scheme === 'file' && !d.isClosed)
      .map((d) => ({ uri: d.uri.toString(), version: d.version }));
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `SWE-Spot: ${request.length > 60 ? request.slice(0, 57) + '…' : request}`, cancellable: true },
      async (_progress, token) => {
        try {
          return await this.server.request<P.TaskResult>(P.TASK, { request, textDocuments } satisfies P.TaskParams, token);
        } catch (err) {
          if (isCancellation(err) || token.isCancellationRequested) {
            return undefined;
          }
          throw err;
        }
      },
    );
    return result ? this.showForReview(result, 'task') : undefined;
  }

  /** Run a code action's edit-producing command on the server (fix, write a test), then review it. */
  async runCodeAction(data: P.CodeActionData): Promise<Decision | undefined> {
    const title = data.action === 'fix' ? 'SWE-Spot: fixing…' : `SWE-Spot: writing a test for ${data.symbol ?? 'this'}…`;
    const result = await vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title, cancellable: true }, (_p, token) =>
      this.server.request<P.TaskResult>('workspace/executeCommand', { command: P.CMD_CODE_ACTION, arguments: [data] }, token),
    );
    return this.showForReview(result, 'codeAction');
  }

  /** Show a server's change as a diff and wait for the user's decision. */
  async showForReview(result: P.TaskResult, kind: P.FeedbackParams['kind']): Promise<Decision | undefined> {
    let changes: FileChange[];
    try {
      changes = planChanges(result.edit, readText);
    } catch (err) {
      const why = err instanceof EditError ? err.message : errorText(err);
      void vscode.window.showErrorMessage(`SWE-Spot's change cannot be shown: ${why}`);
      return undefined;
    }
    if (changes.length === 0) {
      void vscode.window.showInformationMessage(`SWE-Spot made no change (${result.exit}). ${result.summary}`.trim());
      return undefined;
    }
    this.review?.decide('superseded');
    this.contents.clear();
    const rel = (uri: string) => vscode.workspace.asRelativePath(vscode.Uri.parse(uri), false);
    const sides = changes.map((c) => {
      const target = vscode.Uri.parse(c.uri);
      const before = vscode.Uri.from({ scheme: PROPOSED_SCHEME, path: target.path, query: `task=${result.taskId}&side=before` });
      const after = vscode.Uri.from({ scheme: PROPOSED_SCHEME, path: target.path, query: `task=${result.taskId}&side=after` });
      this.contents.set(before.toString(), c.before);
      this.contents.set(after.toString(), c.after);
      return { change: c, target, before, after };
    });
    let review!: Review;
    const decision = new Promise<Decision>((resolve) => {
      review = { result, kind, changes, decide: resolve };
    });
    this.review = review;
    await vscode.commands.executeCommand('setContext', REVIEWING, true);
    if (sides.length === 1) {
      const s = sides[0];
      const left = s.change.kind === 'create' ? s.before : s.target;
      await vscode.commands.executeCommand('vscode.diff', left, s.after, `SWE-Spot proposes: ${rel(s.change.uri)}`, { preview: false });
    } else {
      await vscode.commands.executeCommand('vscode.changes', `SWE-Spot proposes ${sides.length} changes`,
        sides.map((s) => [s.target, s.change.kind === 'create' ? s.before : s.target, s.after]));
    }
    const files = describeChanges(changes, rel);
    this.log.info(`task ${result.taskId} (${result.exit}, ${result.usage.turns} turns): ${files}`);
    void vscode.window
      .showInformationMessage(`SWE-Spot proposes a change to ${files}. ${result.summary}`.trim(), 'Accept', 'Reject')
      .then((choice) => {
        if (this.review !== review) {
          return; // this notification's change was decided (or replaced by a newer one) meanwhile
        }
        if (choice === 'Accept') {
          void this.accept();
        } else if (choice === 'Reject') {
          void this.reject();
        }
      });
    const outcome = await decision;
    this.decided.fire({ taskId: result.taskId, decision: outcome });
    return outcome;
  }

  /** Apply the change under review as one undoable edit (refused if a file changed meanwhile). */
  async accept(): Promise<boolean> {
    const review = this.review;
    if (!review) {
      void vscode.window.showInformationMessage('There is no SWE-Spot change to accept.');
      return false;
    }
    const stale = staleChanges(review.changes, (uri) => vscode.workspace.textDocuments.find((d) => d.uri.toString() === vscode.Uri.parse(uri).toString())?.version);
    if (stale.length) {
      const names = stale.map((c) => vscode.workspace.asRelativePath(vscode.Uri.parse(c.uri))).join(', ');
      void vscode.window.showErrorMessage(`SWE-Spot's change was made for an older version of ${names}; ask again.`);
      return false;
    }
    const edit = await this.server.ready().protocol2CodeConverter.asWorkspaceEdit(review.result.edit);
    const applied = await vscode.workspace.applyEdit(edit);
    if (!applied) {
      void vscode.window.showErrorMessage('VS Code could not apply SWE-Spot\'s change (a file changed or is read-only); nothing was changed.');
      return false;
    }
    await this.finish('accepted');
    return true;
  }

  async reject(): Promise<void> {
    if (this.review) {
      await this.finish('rejected');
    }
  }

  private async finish(decision: 'accepted' | 'rejected'): Promise<void> {
    const review = this.review;
    if (!review) {
      return;
    }
    this.review = undefined;
    this.server.notify(P.FEEDBACK, { id: review.result.taskId, kind: review.kind, action: decision } satisfies P.FeedbackParams);
    if (decision === 'accepted') {
      for (const change of review.changes.filter((c) => c.kind !== 'delete')) {
        this.accepted.set(vscode.Uri.parse(change.uri).toString(), { taskId: review.result.taskId, kind: review.kind, text: change.after });
      }
    }
    await vscode.commands.executeCommand('setContext', REVIEWING, false);
    await this.closeDiffs();
    review.decide(decision);
  }

  private async closeDiffs(): Promise<void> {
    const tabs = vscode.window.tabGroups.all.flatMap((g) => g.tabs).filter((t) => {
      const input = t.input;
      return (input instanceof vscode.TabInputTextDiff && input.modified.scheme === PROPOSED_SCHEME)
        || (typeof input === 'object' && input !== null && 'textDiffs' in input);
    });
    await vscode.window.tabGroups.close(tabs, true);
  }

  get pending(): P.TaskResult | undefined {
    return this.review?.result;
  }

  dispose(): void {
    this.review?.decide('superseded');
    this.disposables.forEach((d) => d.dispose());
  }
}
