import * as assert from 'assert';
import { codeActionMiddleware, REVIEW_CODE_ACTION, routeThroughReview } from '../../src/codeActions';
import type { CodeActionData } from '../../src/protocol';

const range = { start: { line: 3, character: 0 }, end: { line: 3, character: 5 } };
const fix: CodeActionData = { action: 'fix', uri: 'file:///r/a.py', range, version: 1 };

describe('routeThroughReview', () => {
  it('sends an action the server would resolve into an edit through the review command', () => {
    const action = { title: 'SWE-Spot: Fix', kind: 'quickfix', data: fix } as { title: string; kind: string; data: unknown; command?: { title: string; command: string; arguments?: unknown[] } };
    assert.ok(routeThroughReview(action));
    assert.strictEqual(action.command?.command, REVIEW_CODE_ACTION);
    assert.deepStrictEqual(action.command?.arguments, [fix]);
  });

  it('leaves alone actions with an edit or a command, explanations, and other servers\' data', () => {
    assert.ok(!routeThroughReview({ title: 't', edit: {}, data: fix }));
    assert.ok(!routeThroughReview({ title: 't', command: { title: 't', command: 'x' }, data: fix }));
    assert.ok(!routeThroughReview({ title: 't', data: { ...fix, action: 'explain' } }));
    assert.ok(!routeThroughReview({ title: 't', data: { something: 'else' } }));
  });
});

describe('codeActionMiddleware', () => {
  it('answers the server\'s explain and codeAction commands here, and passes other commands on', async () => {
    const seen: string[] = [];
    const mw = codeActionMiddleware({ explain: async (d) => seen.push(`explain ${d.uri}`), review: async (d) => seen.push(`review ${d.action}`) });
    const next = async (command: string) => seen.push(`server ${command}`);
    await mw.executeCommand!('swespot.explain', [{ ...fix, action: 'explain' }], next);
    await mw.executeCommand!('swespot.codeAction', [fix], next);
    await mw.executeCommand!('other.command', [], next);
    assert.deepStrictEqual(seen, ['explain file:///r/a.py', 'review fix', 'server other.command']);
  });

  it('does not ask the server to resolve an action it rerouted, but does resolve the others', async () => {
    const mw = codeActionMiddleware({ explain: async () => undefined, review: async () => undefined });
    const ours = { title: 'SWE-Spot: Fix', kind: 'quickfix', data: fix };
    const theirs = { title: 'Other', kind: 'quickfix', data: { x: 1 } };
    const listed = await mw.provideCodeActions!({} as never, {} as never, {} as never, {} as never, async () => [ours, theirs] as never);
    assert.strictEqual(listed?.length, 2);
    const resolved: unknown[] = [];
    const next = async (item: unknown) => { resolved.push(item); return item; };
    await mw.resolveCodeAction!(ours as never, {} as never, next as never);
    await mw.resolveCodeAction!(theirs as never, {} as never, next as never);
    assert.deepStrictEqual(resolved, [theirs]);
  });
});
