/**
 * The status bar item (model, adapter, the commit it knows, training) and the menu behind it: details,
 * pause/resume background training, retrain now, roll back to an older adapter, logs, restart.
 */
import * as vscode from 'vscode';
import * as P from './protocol';
import { describeStatus, reportToOpen } from './status';
import { errorText, SwespotServer } from './server';
import { LaunchError, LaunchFix } from './serverCommand';

export const STATUS_ITEM_ID = 'swespot.status';

export class StatusBar implements vscode.Disposable {
  readonly item: vscode.StatusBarItem;
  private failure: { message: string; fix?: LaunchFix } | undefined;

  constructor() {
    this.item = vscode.window.createStatusBarItem(STATUS_ITEM_ID, vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'SWE-Spot';
    this.item.command = 'swespot.showStatus';
    this.render(undefined);
    this.item.show();
  }

  render(status: P.StatusParams | undefined): void {
    this.failure = undefined;
    const agentModel = vscode.workspace.getConfiguration('swespot').get<string>('agentModel', '');
    const view = describeStatus(status, agentModel);
    this.item.text = view.text;
    this.item.tooltip = new vscode.MarkdownString(view.details.map((d) => `- ${d.replace(/[\\`*_[\]]/g, '\\$&')}`).join('\n'));
    this.item.accessibilityInformation = { label: view.label };
    this.item.backgroundColor = view.severity === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  }

  fail(message: string, error?: LaunchError): void {
    this.failure = { message, fix: error?.fix };
    this.item.text = '$(error) SWE-Spot: not running';
    this.item.tooltip = message;
    this.item.accessibilityInformation = { label: `SWE-Spot not running: ${message}` };
    this.item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
  }

  get problem(): { message: string; fix?: LaunchFix } | undefined {
    return this.failure;
  }

  dispose(): void {
    this.item.dispose();
  }
}

interface MenuItem extends vscode.QuickPickItem {
  run?: () => Thenable<unknown> | unknown;
}

/** The menu the status bar item opens. */
export async function showStatusMenu(server: SwespotServer, bar: StatusBar, log: vscode.LogOutputChannel): Promise<void> {
  const status = server.lastStatus;
  const items: MenuItem[] = [];
  const problem = bar.problem;
  if (problem) {
    items.push({ label: '$(error) SWE-Spot is not running', detail: problem.message });
    items.push(...fixItems(problem.fix));
  } else {
    const view = describeStatus(status, vscode.workspace.getConfiguration('swespot').get<string>('agentModel', ''));
    items.push({ label: `$(info) ${view.details[0]}`, detail: view.details.slice(1).join(' · ') });
    if (status?.error) {
      items.push(...fixItems('chooseModel'));
    }
    const training = status?.daemon.enabled ?? vscode.workspace.getConfiguration('swespot').get<boolean>('backgroundTraining', false);
    items.push(
      training
        ? { label: '$(debug-pause) Pause background training', run: () => vscode.commands.executeCommand('swespot.pauseTraining') }
        : { label: '$(play) Resume background training', run: () => vscode.commands.executeCommand('swespot.resumeTraining') },
      { label: '$(sync) Retrain now', run: () => vscode.commands.executeCommand('swespot.retrain') },
      { label: '$(history) Roll back the adapter…', run: () => vscode.commands.executeCommand('swespot.rollback') },
      { label: '$(graph) Open the evaluation report', run: () => vscode.commands.executeCommand('swespot.openReport') },
    );
  }
  items.push(
    { label: '$(comment-discussion) Open chat', run: () => vscode.commands.executeCommand('swespot.openChat') },
    { label: '$(output) Show logs', run: () => log.show() },
    { label: '$(debug-restart) Restart the language server', run: () => vscode.commands.executeCommand('swespot.restartServer') },
  );
  const picked = await vscode.window.showQuickPick(items, { title: 'SWE-Spot', placeHolder: 'SWE-Spot Local' });
  await picked?.run?.();
}

function fixItems(fix: LaunchFix | undefined): MenuItem[] {
  switch (fix) {
    case 'chooseServer':
      return [{ label: '$(file-binary) Choose the swespot executable…', run: () => vscode.commands.executeCommand('swespot.chooseServer') }];
    case 'choosePython':
      return [{ label: '$(file-binary) Choose the Python with SWE-Spot installed…', run: () => vscode.commands.executeCommand('swespot.choosePython') }];
    case 'chooseModel':
      return [{ label: '$(file) Choose the model (GGUF)…', run: () => vscode.commands.executeCommand('swespot.chooseModel') }];
    case 'openFolder':
      return [{ label: '$(folder-opened) Open a folder…', run: () => vscode.commands.executeCommand('vscode.openFolder') }];
    default:
      return [];
  }
}

/** Where a setting written by a command goes: the workspace when there is one. */
export function settingsTarget(): vscode.ConfigurationTarget {
  return vscode.workspace.workspaceFolders?.length ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
}

export async function setTraining(on: boolean): Promise<void> {
  await vscode.workspace.getConfiguration('swespot').update('backgroundTraining', on, settingsTarget());
}

export async function retrain(server: SwespotServer): Promise<void> {
  try {
    const result = await server.request<P.RetrainResult>(P.RETRAIN, {});
    void vscode.window.showInformationMessage(`SWE-Spot: ${result.message}.`);
  } catch (err) {
    const message = errorText(err);
    if (/paused/.test(message)) {
      const choice = await vscode.window.showWarningMessage(`SWE-Spot: ${message}`, 'Resume and retrain');
      if (choice) {
        await setTraining(true);
        server.pushSettings(); // so the request below finds training on, whenever VS Code fires its change event
        await retrain(server);
      }
      return;
    }
    void vscode.window.showErrorMessage(`SWE-Spot cannot retrain: ${message}`);
  }
}

/** Versions for the rollback picker: usable ones, newest first; the current one is marked. */
export function rollbackChoices(result: P.AdaptersResult): { label: string; description?: string; detail?: string; version: string; current: boolean }[] {
  return [...result.versions]
    .filter((v) => v.usable)
    .reverse()
    .map((v) => ({
      label: v.version,
      description: [v.version === result.current ? 'current' : '', v.version === result.serving ? 'serving' : ''].filter(Boolean).join(', ') || undefined,
      detail: [v.commit ? `trained up to ${v.commit.slice(0, 12)}` : 'commit unknown', v.publishedAt ? `published ${new Date(v.publishedAt * 1000).toLocaleString()}` : ''].filter(Boolean).join(' · '),
      version: v.version,
      current: v.version === result.current,
    }));
}

export async function rollback(server: SwespotServer, version?: string): Promise<void> {
  try {
    if (!version) {
      const listed = await server.request<P.AdaptersResult>(P.ADAPTERS, {});
      const choices = rollbackChoices(listed);
      if (choices.length === 0) {
        void vscode.window.showInformationMessage('SWE-Spot has no published adapter to roll back to yet.');
        return;
      }
      const picked = await vscode.window.showQuickPick(choices, { title: 'Roll back SWE-Spot\'s adapter to…' });
      if (!picked || picked.current) {
        return;
      }
      version = picked.version;
    }
    const info = await server.request<P.AdapterInfo>(P.ROLLBACK, { version } satisfies P.RollbackParams);
    void vscode.window.showInformationMessage(`SWE-Spot now serves adapter ${info.version}${info.commit ? ` (commit ${info.commit.slice(0, 7)})` : ''}.`);
  } catch (err) {
    void vscode.window.showErrorMessage(`SWE-Spot cannot roll back: ${errorText(err)}`);
  }
}

/** Show the evaluation report of the served adapter (a self-contained HTML file) in a webview. */
export async function openReport(server: SwespotServer): Promise<void> {
  try {
    const found = reportToOpen(await server.request<P.AdaptersResult>(P.ADAPTERS, {}));
    if (!found) {
      void vscode.window.showInformationMessage('SWE-Spot has no evaluation report yet: run `swespot specialize` on this repository.');
      return;
    }
    const html = new TextDecoder().decode(await vscode.workspace.fs.readFile(vscode.Uri.file(found.report)));
    const panel = vscode.window.createWebviewPanel('swespot.report', `SWE-Spot evaluation (${found.version})`, vscode.ViewColumn.Active,
      { enableScripts: false });
    panel.webview.html = html;
  } catch (err) {
    void vscode.window.showErrorMessage(`SWE-Spot cannot open the evaluation report: ${errorText(err)}`);
  }
}
