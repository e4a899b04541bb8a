// Starting and stopping a private code-server (a real VS Code in the browser, offline) for the e2e
// test: its own user-data, extensions, XDG and temp dirs, in its own session so that the whole process
// group (it leaves helper processes behind) can be killed at the end.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Dirs for one run under `home`. */
export function privateDirs(home) {
  const dirs = {
    userData: path.join(home, 'user-data'),
    extensions: path.join(home, 'extensions'),
    config: path.join(home, 'xdg-config'),
    data: path.join(home, 'xdg-data'),
    cache: path.join(home, 'xdg-cache'),
    tmp: path.join(home, 'tmp'),
  };
  Object.values(dirs).forEach((d) => fs.mkdirSync(d, { recursive: true }));
  return dirs;
}

function env(dirs, extra) {
  return {
    ...process.env,
    XDG_CONFIG_HOME: dirs.config,
    XDG_DATA_HOME: dirs.data,
    XDG_CACHE_HOME: dirs.cache,
    TMPDIR: dirs.tmp,
    ...extra,
  };
}

/** `code-server --install-extension FILE.vsix` into the private extensions dir (a folder is refused). */
export function installExtension(bin, dirs, vsix) {
  const done = spawnSync(bin, ['--install-extension', vsix, '--extensions-dir', dirs.extensions, '--user-data-dir', dirs.userData], {
    env: env(dirs, {}), encoding: 'utf8', timeout: 120_000,
  });
  if (done.status !== 0) {
    throw new Error(`code-server --install-extension ${vsix} failed (${done.status}):\n${done.stdout}\n${done.stderr}`);
  }
  return done.stdout.trim();
}

/** Start code-server; resolves once it answers HTTP. `stop()` kills its whole process group. */
export async function startCodeServer(bin, dirs, { port, logFile, extraEnv = {}, timeoutMs = 60_000 }) {
  const log = fs.openSync(logFile, 'a');
  const args = [
    '--auth', 'none', '--bind-addr', `127.0.0.1:${port}`, '--disable-telemetry', '--disable-update-check',
    '--disable-workspace-trust', '--reconnection-grace-time', '5', '--vscode-option', 'enable-smoke-test-driver',
    '--user-data-dir', dirs.userData, '--extensions-dir', dirs.extensions, '--ignore-last-opened',
  ];
  // detached: a new session (setsid), so -pid names the whole group
  const child = spawn(bin, args, { env: env(dirs, extraEnv), stdio: ['ignore', log, log], detached: true });
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  const stop = async () => {
    for (const signal of ['SIGTERM', 'SIGKILL']) {
      try {
        process.kill(-child.pid, signal);
      } catch {
        return; // the group is gone
      }
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        try {
          process.kill(-child.pid, 0);
        } catch {
          return;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) {
      throw new Error(`code-server exited (${JSON.stringify(exited)}) before it served; see ${logFile}`);
    }
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) {
        return { url, stop, pid: child.pid };
      }
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  await stop();
  throw new Error(`code-server did not answer on ${url} within ${timeoutMs / 1000} s; see ${logFile}`);
}
