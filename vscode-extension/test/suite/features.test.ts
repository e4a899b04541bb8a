// The extension inside a real VS Code (code-server) against the real `swespot serve` on the tiny model:
// what the UI test does not reach. The workspace and its settings come from tests/vscode/; the
// server's state dir is $SWESPOT_STATE_DIR, where its feedback journal is read back.
import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import * as vscode from 'vscode';
import type { SwespotApi } from '../../src/extension';
import * as P from '../../src/protocol';
import { isCancellation } from '../../src/server';

const EXTENSION_ID = 'swespot.swespot-local';
let api: SwespotApi;
let root: vscode.Uri;

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== null && value !== false) {
      return value as T;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function feedbackJournal(): { id: string; kind: string; action: string }[] {
  const state = process.env.SWESPOT_STATE_DIR;
  assert.ok(state, 'SWESPOT_STATE_DIR must be set for this suite');
  const files: string[] = [];
  const walk = (dir: string) => fs.readdirSync(dir, { withFileTypes: true }).forEach((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : e.name === 'feedback.jsonl' && files.push(path.join(dir, e.name))));
  walk(state);
  return files.flatMap((f) => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)));
}


describe('SWE-Spot in VS Code', () => {
  before(async () => {
    const ext = vscode.extensions.getExtension<SwespotApi>(EXTENSION_ID);
    assert.ok(ext, `${EXTENSION_ID} is not loaded`);
    api = await ext.activate();
    root = vscode.workspace.workspaceFolders![0].uri;
    await until('the server to be ready', () => api.server.lastStatus?.state === 'ready' && api.server.lastStatus.model);
  });

  it('registers its commands, the @swespot participant\'s model, and a status bar item that reads ready', async () => {
    const commands = await vscode.commands.getCommands(true);
    for (const id of ['swespot.openChat', 'swespot.doTask', 'swespot.showStatus', 'swespot.rollback', 'swespot.retrain', 'swespot.completionAccepted']) {
      assert.ok(commands.includes(id), id);
    }
    const models = await vscode.lm.selectChatModels({ vendor: 'swespot' });
    assert.deepStrictEqual(models.map((m) => m.name), ['SWE-Spot (local)']);
    assert.match(api.statusBar.item.text, /SWE-Spot · tiny-q8_0 · base/);
  });

  it('shows the server\'s completion as ghost text, and accepting it reaches the feedback journal', async () => {
    const doc = await vscode.workspace.openTextDocument(vscode.Uri.joinPath(root, 'calc', 'report.py'));
    await vscode.window.showTextDocument(doc);
    const position = new vscode.Position(3, 14); // "def total(xs):|"
    const ask = () => api.inline.provideInlineCompletionItems(doc, position,
      { triggerKind: vscode.InlineCompletionTriggerKind.Invoke, selectedCompletionInfo: undefined } as vscode.InlineCompletionContext,
      new vscode.CancellationTokenSource().token);
    assert.deepStrictEqual(await ask(), [], 'the workspace turned ghost text off');
    await vscode.workspace.getConfiguration('swespot').update('inlineCompletion.enabled', true, vscode.ConfigurationTarget.Workspace);
    const items = await ask();
    assert.strictEqual(items.length, 1);
    const item = items[0];
    assert.ok(typeof item.insertText === 'string' && item.insertText.length > 0);
    assert.ok(item.range?.start.isEqual(position));
    assert.strictEqual(item.command?.command, P.CMD_COMPLETION_ACCEPTED);
    await vscode.commands.executeCommand(item.command!.command, ...(item.command!.arguments ?? []));
    const id = item.command!.arguments![0];
    await until('the accepted completion in feedback.jsonl', () => feedbackJournal().find((e) => e.id === id && e.action === 'accepted'));
  });

  it('lists the server\'s code actions, with edits routed through the review', async () => {
    const uri = vscode.Uri.joinPath(root, 'calc', 'ops.py');
    await vscode.window.showTextDocument(await vscode.workspace.openTextDocument(uri));
    const actions = await vscode.commands.executeCommand<vscode.CodeAction[]>('vscode.executeCodeActionProvider', uri, new vscode.Range(5, 4, 5, 4));
    const byTitle = new Map(actions.map((a) => [a.title, a]));
    assert.strictEqual(byTitle.get('SWE-Spot: Explain this')?.command?.command, P.CMD_EXPLAIN);
    const test = byTitle.get('SWE-Spot: Write a test for add');
    assert.ok(test, `no test action among ${[...byTitle.keys()].join(', ')}`);
    assert.strictEqual(test.edit, undefined, 'an agent edit must not be applied without review');
    assert.strictEqual(test.command?.command, 'swespot.reviewCodeAction');
  });

  it('explains code in the chat panel, streamed from the tiny model', async () => {
    const uri = vscode.Uri.joinPath(root, 'calc', 'ops.py');
    const result = (await api.panel.ask('Explain what this code does and why.', { uri, selection: new vscode.Range(3, 0, 5, 16) }))!;
    assert.ok(result, 'no answer');
    assert.ok(result.text.trim().length > 0 && result.usage.completionTokens > 0);
  });

  it('stops generating when a chat is cancelled (the panel\'s Stop, the chat view\'s stop)', async () => {
    const config = () => vscode.workspace.getConfiguration('swespot');
    await config().update('chatMaxTokens', 2000, vscode.ConfigurationTarget.Workspace);
    const question = { prompt: 'Tell me everything about this repository.', history: [] };
    // greedy decoding: the same reply each time; the first one also shows the larger budget arrived
    let wholeDeltas = 0;
    const whole = await until('a reply longer than the workspace\'s 48 tokens', async () => {
      wholeDeltas = 0;
      const reply = await api.chat.ask(question, () => (wholeDeltas += 1));
      return reply.usage.completionTokens > 48 ? reply : undefined;
    });
    assert.ok(wholeDeltas > 10, `the whole reply came in ${wholeDeltas} deltas: too few to tell a stopped chat from one that went on`);
    const stop = new vscode.CancellationTokenSource();
    const droppedBefore = api.server.deltas.dropped;
    let streamed = '';
    await assert.rejects(api.chat.ask(question, (d) => {
      streamed += d.text;
      stop.cancel();
    }, stop.token), (err: unknown) => isCancellation(err) || /cancel/i.test(String(err)));
    // the model thread runs one job at a time: once this answers, the cancelled chat has really ended
    await api.server.request(P.GET_STATUS, {});
    await api.chat.ask({ prompt: 'ok', history: [] }, () => undefined);
    assert.ok(streamed.length > 0 && streamed.length < whole.text.length / 2, `streamed ${streamed.length} of ${whole.text.length} characters`);
    // had the server gone on generating, its deltas (for a chat nobody listens to any more) would be many
    const late = api.server.deltas.dropped - droppedBefore;
    assert.ok(late <= 2, `${late} deltas arrived after the cancel`);
    assert.strictEqual(api.server.deltas.listening, 0);
    await config().update('chatMaxTokens', 48, vscode.ConfigurationTarget.Workspace);
  });

  it('shows a task\'s change for review; rejecting it changes nothing and is journalled', async () => {
    const script = process.env.SWESPOT_TASK_SCRIPT;
    assert.ok(script, 'SWESPOT_TASK_SCRIPT must name a scripted agent model');
    await vscode.workspace.getConfiguration('swespot').update('agentModel', `scripted:${script}`, vscode.ConfigurationTarget.Workspace);
    const ops = vscode.Uri.joinPath(root, 'calc', 'ops.py');
    const before = (await vscode.workspace.openTextDocument(ops)).getText();
    const decided = api.reviewer.runTask('Make add return the sum');
    const pending = await until('the change under review', () => api.reviewer.pending);
    assert.deepStrictEqual(pending.files, ['calc/ops.py']);
    await until('the diff tab', () => vscode.window.tabGroups.all.flatMap((g) => g.tabs).some((t) => t.label === 'SWE-Spot proposes: calc/ops.py'));
    await vscode.commands.executeCommand('swespot.rejectChange');
    assert.strictEqual(await decided, 'rejected');
    assert.strictEqual((await vscode.workspace.openTextDocument(ops)).getText(), before);
    await until('the rejection in feedback.jsonl', () => feedbackJournal().find((e) => e.id === pending.taskId && e.action === 'rejected'));
  });

  it('applies an accepted change as one undoable edit, and journals an edit made after it', async () => {
    const ops = vscode.Uri.joinPath(root, 'calc', 'ops.py');
    const doc = await vscode.workspace.openTextDocument(ops);
    const before = doc.getText();
    const accepted = before.replace('return a - b', 'return a + b');
    const decided = api.reviewer.runTask('Make add return the sum');
    const pending = await until('the change under review', () => api.reviewer.pending);
    await vscode.commands.executeCommand('swespot.acceptChange');
    assert.strictEqual(await decided, 'accepted');
    assert.strictEqual(doc.getText(), accepted);
    await vscode.window.showTextDocument(doc);
    await vscode.commands.executeCommand('undo');
    assert.strictEqual(doc.getText(), before, 'one undo takes the whole change back');
    await vscode.commands.executeCommand('redo');
    // the redo reaches this host's copy of the document a moment later; an edit made before it arrives
    // is refused (edit() answers false) for a stale version, and the save then saves nothing new
    await until('the redo', () => doc.getText() === accepted);
    const editor = await vscode.window.showTextDocument(doc);
    await until('the edit after the accept', async () => await editor.edit((e) => e.insert(new vscode.Position(0, 0), '# reviewed\n')));
    assert.ok(await doc.save(), 'the edited file could not be saved');
    const entry = await until('editedAfterAccept in feedback.jsonl', () => feedbackJournal().find((e) => e.id === pending.taskId && e.action === 'editedAfterAccept'));
    assert.ok((entry as { finalText?: string }).finalText?.startsWith('# reviewed\n'));
    await vscode.workspace.getConfiguration('swespot').update('agentModel', undefined, vscode.ConfigurationTarget.Workspace);
  });

  it('says what is wrong when the model or the server is missing, and recovers when fixed', async () => {
    const config = () => vscode.workspace.getConfiguration('swespot');
    const model = config().get<string>('model')!;
    const notRunning = () => (api.statusBar.item.accessibilityInformation?.label.startsWith('SWE-Spot not running') ? api.statusBar.problem : undefined);
    await config().update('model', `${model}.missing`, vscode.ConfigurationTarget.Workspace);
    const noModel = await until('the missing model to be reported', notRunning);
    assert.match(noModel.message, /swespot\.model is .*\.missing, which is not a file/);
    assert.strictEqual(noModel.fix, 'chooseModel');
    await config().update('model', model, vscode.ConfigurationTarget.Workspace);
    await until('the server to be ready with the model back', () => api.server.lastStatus?.state === 'ready' && !notRunning());
    const serverPath = config().get<string>('server.path')!;
    await config().update('server.path', `${serverPath}-missing`, vscode.ConfigurationTarget.Workspace);
    const noServer = await until('the missing server to be reported', notRunning);
    assert.match(noServer.message, /swespot\.server\.path is .*-missing, which does not exist: run \.\/scripts\/setup/);
    assert.strictEqual(noServer.fix, 'chooseServer');
    await config().update('server.path', serverPath, vscode.ConfigurationTarget.Workspace);
    await until('the server to be ready again', () => api.server.lastStatus?.state === 'ready' && !notRunning());
  });

  it('answers the status menu\'s training and rollback requests with reasons', async () => {
    await assert.rejects(api.server.request(P.RETRAIN, {}), /background training is paused/);
    const adapters = await api.server.request<P.AdaptersResult>(P.ADAPTERS, {});
    assert.deepStrictEqual(adapters.versions, []);
    await assert.rejects(api.server.request(P.ROLLBACK, { version: 'v0001' }), /no version v0001/);
  });
});
