import * as assert from 'assert';
import type { StatusParams } from '../../src/protocol';
import { describeStatus, reportToOpen, trainingWords } from '../../src/status';

const base: StatusParams = { state: 'ready', model: 'tiny-q8_0.gguf', daemon: { enabled: false, running: false, available: true } };

describe('describeStatus', () => {
  it('shows the adapter and the commit it knows, and says everything in the label', () => {
    const view = describeStatus({ ...base, adapter: { version: 'v0003', commit: '1a2b3c4d5e6f' }, swapMs: 1.24 }, 'scripted:/t.json');
    assert.strictEqual(view.text, '$(hubot) SWE-Spot · tiny-q8_0 · v0003@1a2b3c4');
    assert.deepStrictEqual(view.details, ['state: ready', 'model: tiny-q8_0.gguf', 'adapter v0003 (commit 1a2b3c4)', 'background training paused',
      'chat and tasks: scripted:/t.json', 'last adapter swap: 1.2 ms']);
    assert.match(view.label, /^SWE-Spot state: ready, model: tiny-q8_0\.gguf/);
    assert.strictEqual(view.severity, 'ok');
  });

  it('shows training progress while the daemon trains', () => {
    const view = describeStatus({ ...base, daemon: { enabled: true, running: true, available: true, phase: 'training', progress: 0.456 } });
    assert.strictEqual(view.text, '$(hubot) SWE-Spot · tiny-q8_0 · base · $(mortar-board) training 46%');
  });

  it('marks loading as busy and errors as errors, with the server\'s words', () => {
    assert.strictEqual(describeStatus({ ...base, state: 'loading', model: undefined }).severity, 'busy');
    const err = describeStatus({ ...base, state: 'error', error: 'cannot load /m.gguf' });
    assert.strictEqual(err.text, '$(error) SWE-Spot: error · tiny-q8_0 · base');
    assert.ok(err.details.includes('error: cannot load /m.gguf'));
    assert.strictEqual(err.severity, 'error');
    assert.strictEqual(describeStatus(undefined).severity, 'busy');
  });
});

describe('trainingWords', () => {
  it('names each daemon situation', () => {
    const d = (daemon: Partial<StatusParams['daemon']>) => trainingWords({ ...base, daemon: { ...base.daemon, ...daemon } });
    assert.strictEqual(d({}), 'background training paused');
    assert.strictEqual(d({ enabled: true, available: false }), 'background training unavailable');
    assert.strictEqual(d({ enabled: true, error: 'disk full' }), 'training error: disk full');
    assert.strictEqual(d({ enabled: true }), 'background training not running');
    assert.strictEqual(d({ enabled: true, running: true }), 'idle');
    assert.strictEqual(d({ enabled: true, running: true, phase: 'exporting' }), 'exporting');
  });
});

describe('reportToOpen', () => {
  const v = (version: string, report?: string, usable = true) => ({ version, usable, report });
  it('opens the served version\'s report, else the current one\'s, else the newest one\'s', () => {
    const versions = [v('v0001', '/r1.html'), v('v0002', '/r2.html'), v('v0003')];
    assert.deepStrictEqual(reportToOpen({ versions, current: 'v0002', serving: 'v0001' }), { version: 'v0001', report: '/r1.html' });
    assert.deepStrictEqual(reportToOpen({ versions, current: 'v0002', serving: 'v0003' }), { version: 'v0002', report: '/r2.html' });
    assert.deepStrictEqual(reportToOpen({ versions, current: 'v0003' }), { version: 'v0002', report: '/r2.html' });
  });
  it('has nothing to open without a report or with only damaged versions', () => {
    assert.strictEqual(reportToOpen({ versions: [v('v0001')] }), undefined);
    assert.strictEqual(reportToOpen({ versions: [v('v0001', '/r1.html', false)] }), undefined);
  });
});
