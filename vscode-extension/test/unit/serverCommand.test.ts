import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { LaunchError, LaunchInput, resolveLaunch } from '../../src/serverCommand';

const roots: string[] = [];
after(() => roots.splice(0).forEach((root) => fs.rmSync(root, { recursive: true, force: true })));

/** Real files in a temp dir (removed after the tests): the file system is not mocked. */
function sandbox() {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'swespot-launch-'));
  roots.push(root);
  const file = (rel: string, exec = false) => {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, '#!/bin/sh\n');
    fs.chmodSync(p, exec ? 0o755 : 0o644);
    return p;
  };
  const input = (over: Partial<LaunchInput>): LaunchInput => ({
    serverPath: '', python: '', model: '', folders: [path.join(root, 'repo')], envPath: '',
    isExecutable: (f) => { try { fs.accessSync(f, fs.constants.X_OK); return fs.statSync(f).isFile(); } catch { return false; } },
    isFile: (f) => { try { return fs.statSync(f).isFile(); } catch { return false; } },
    ...over,
  });
  return { root, file, input };
}

function fails(fn: () => unknown, fix: string, message: RegExp) {
  assert.throws(fn, (err: unknown) => err instanceof LaunchError && err.fix === fix && message.test(err.message));
}

describe('resolveLaunch', () => {
  it('uses swespot.server.path first and serves the first workspace folder', () => {
    const s = sandbox();
    const exe = s.file('checkout/.venv/bin/swespot', true);
    const launch = resolveLaunch(s.input({ serverPath: exe, folders: [path.join(s.root, 'repo'), path.join(s.root, 'other')] }));
    assert.deepStrictEqual([launch.command, launch.args, launch.source], [exe, ['serve', '--repo', path.join(s.root, 'repo')], 'swespot.server.path']);
  });

  it('runs the module with swespot.server.python', () => {
    const s = sandbox();
    const py = s.file('venv/bin/python', true);
    const launch = resolveLaunch(s.input({ python: py }));
    assert.deepStrictEqual(launch.args.slice(0, 3), ['-m', 'swespot', 'serve']);
  });

  it('falls back to the workspace .venv, then PATH', () => {
    const s = sandbox();
    const onPath = s.file('bin/swespot', true);
    assert.strictEqual(resolveLaunch(s.input({ envPath: path.dirname(onPath) })).command, onPath);
    const venv = s.file('repo/.venv/bin/swespot', true);
    assert.strictEqual(resolveLaunch(s.input({ envPath: path.dirname(onPath) })).command, venv);
  });

  it('says what to do when nothing is found, or a setting points nowhere', () => {
    const s = sandbox();
    fails(() => resolveLaunch(s.input({})), 'chooseServer', /not found .*\.\/scripts\/setup/);
    fails(() => resolveLaunch(s.input({ serverPath: path.join(s.root, 'nope') })), 'chooseServer', /which does not exist/);
    fails(() => resolveLaunch(s.input({ serverPath: s.file('plain') })), 'chooseServer', /not executable/);
    fails(() => resolveLaunch(s.input({ python: path.join(s.root, 'py') })), 'choosePython', /not an executable Python/);
    fails(() => resolveLaunch(s.input({ folders: [] })), 'openFolder', /open a folder/);
  });

  it('refuses a model setting that is not a file before starting anything', () => {
    const s = sandbox();
    const exe = s.file('swespot', true);
    fails(() => resolveLaunch(s.input({ serverPath: exe, model: path.join(s.root, 'tiny.gguf') })), 'chooseModel', /tiny\.gguf, which is not a file/);
    const model = s.file('tiny.gguf');
    assert.strictEqual(resolveLaunch(s.input({ serverPath: exe, model })).command, exe);
  });
});
