// Runs the extension's in-editor Mocha suite (test/suite/, bundled to out/test/suite/index.js) inside a
// real VS Code (code-server, offline): the page is opened with VS Code's test payload
// (extensionDevelopmentPath + extensionTestsPath), and the suite's log and exit code come back through
// the page functions codeAutomationLog/codeAutomationExit, which Playwright provides. Prints one JSON
// line ({exitCode, log}); exits with the suite's code.
//
// usage: node e2e/suite.mjs --workspace DIR --artifacts DIR [--code-server BIN] [--chromium PATH]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { format, parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { freePort, privateDirs, startCodeServer } from './codeServer.mjs';

const { values: opt } = parseArgs({
  options: {
    workspace: { type: 'string' },
    artifacts: { type: 'string' },
    'code-server': { type: 'string', default: process.env.SWESPOT_CODE_SERVER },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    timeout: { type: 'string', default: '300' },
  },
});
for (const key of ['workspace', 'artifacts', 'code-server']) {
  if (!opt[key]) {
    console.error(`e2e/suite.mjs: --${key} is required`);
    process.exit(2);
  }
}
const ext = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tests = path.join(ext, 'out', 'test', 'suite', 'index.js');
for (const file of [path.join(ext, 'dist', 'extension.js'), tests]) {
  if (!fs.existsSync(file)) {
    console.error(`e2e/suite.mjs: ${file} is missing; build first (node esbuild.mjs --tests)`);
    process.exit(2);
  }
}
const artifacts = path.resolve(opt.artifacts);
fs.mkdirSync(artifacts, { recursive: true });
const home = fs.mkdtempSync(path.join(os.tmpdir(), 'swespot-suite-'));
const dirs = privateDirs(home);
fs.mkdirSync(path.join(dirs.userData, 'User'), { recursive: true });
fs.writeFileSync(path.join(dirs.userData, 'User', 'settings.json'), JSON.stringify({
  'workbench.startupEditor': 'none', 'telemetry.telemetryLevel': 'off', 'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false, 'update.mode': 'none', 'git.enabled': false,
}));

const lines = [];
let exitCode = 1;
let server;
let browser;
let page;
try {
  const port = await freePort();
  server = await startCodeServer(opt['code-server'], dirs, { port, logFile: path.join(artifacts, 'code-server-suite.log') });
  browser = await chromium.launch({
    executablePath: opt.chromium, headless: true, chromiumSandbox: false,
    args: ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = await (await browser.newContext({ viewport: { width: 1400, height: 900 } })).newPage();
  let finish;
  const finished = new Promise((resolve) => (finish = resolve));
  // VS Code calls codeAutomationLog(level, args): the extension host's console output, one call a line
  await page.exposeFunction('codeAutomationLog', (level, args) => {
    const text = format(...(Array.isArray(args) ? args : [args])); // console.log's printf-style arguments
    lines.push(text);
    console.error(text);
  });
  await page.exposeFunction('codeAutomationExit', (code) => finish(Number(code)));
  const remote = (p) => `vscode-remote://127.0.0.1:${port}${p}`;
  const payload = JSON.stringify([['extensionDevelopmentPath', remote(ext)], ['extensionTestsPath', remote(tests)]]);
  await page.goto(`${server.url}/?folder=${encodeURIComponent(opt.workspace)}&payload=${encodeURIComponent(payload)}`);
  const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), Number(opt.timeout) * 1000));
  const outcome = await Promise.race([finished, timeout]);
  await page.screenshot({ path: path.join(artifacts, 'suite-end.png') }).catch(() => undefined);
  if (outcome === 'timeout') {
    lines.push(`the suite did not finish within ${opt.timeout} s`);
  } else {
    exitCode = outcome;
  }
} catch (err) {
  lines.push(String(err?.stack ?? err));
} finally {
  await browser?.close().catch(() => undefined);
  await server?.stop();
  fs.cpSync(path.join(dirs.userData, 'logs'), path.join(artifacts, 'vscode-logs-suite'), { recursive: true, force: true });
  fs.rmSync(home, { recursive: true, force: true });
  fs.writeFileSync(path.join(artifacts, 'suite.log'), lines.join('\n'));
  console.log(JSON.stringify({ exitCode, log: lines }));
  process.exit(exitCode === 0 ? 0 : 1);
}
