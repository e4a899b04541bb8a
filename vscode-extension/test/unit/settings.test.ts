import * as assert from 'assert';
import { affectsLaunch, affectsServer, EXTENSION_SETTING_KEYS, SERVER_SETTING_KEYS, serverSettings } from '../../src/settings';
import * as fs from 'fs';
import * as path from 'path';

const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8'));
const contributed: Record<string, { default: unknown }> = manifest.contributes.configuration.properties;

describe('serverSettings', () => {
  it('sends the server its own keys only (it refuses unknown ones)', () => {
    const values: Record<string, unknown> = { model: '/m.gguf', threads: 2, 'server.path': '/x', 'trace.server': 'verbose' };
    const sent = serverSettings((key) => values[key]);
    assert.deepStrictEqual(sent, { model: '/m.gguf', threads: 2 });
  });

  it('sends every server key the editor knows, with the contributed defaults', () => {
    const sent = serverSettings((key) => contributed[`swespot.${key}`]?.default);
    assert.deepStrictEqual(Object.keys(sent), [...SERVER_SETTING_KEYS]);
    assert.strictEqual(sent.contextSize, 8192);
    assert.deepStrictEqual(sent.excludedPaths, []);
  });

  it('package.json contributes exactly the server keys and the extension keys', () => {
    const expected = [...SERVER_SETTING_KEYS, ...EXTENSION_SETTING_KEYS].map((k) => `swespot.${k}`).sort();
    assert.deepStrictEqual(Object.keys(contributed).sort(), expected);
  });
});

describe('which changes matter', () => {
  it('a server setting is sent; a launch setting restarts the server; others neither', () => {
    const changed = (...keys: string[]) => (section: string) => keys.some((k) => k === section || k.startsWith(`${section}.`));
    assert.ok(affectsServer(changed('swespot.agentModel')));
    assert.ok(!affectsServer(changed('swespot.trace.server')));
    assert.ok(affectsLaunch(changed('swespot.server.path')));
    assert.ok(affectsLaunch(changed('swespot.model')));
    assert.ok(!affectsLaunch(changed('swespot.agentModel')));
    assert.ok(!affectsServer(changed('editor.fontSize')));
  });
});
