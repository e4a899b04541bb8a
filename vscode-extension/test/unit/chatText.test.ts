import * as assert from 'assert';
import { DeltaRouter, findFileReferences, newChatId, questionFromMessages, toHistory, uniqueReferences } from '../../src/chatText';

describe('DeltaRouter', () => {
  it('delivers each delta to the chat that asked, and drops deltas nobody listens to', () => {
    const router = new DeltaRouter();
    const got: string[] = [];
    const a = router.listen('a', (d) => got.push(`a:${d.text}`));
    router.listen('b', (d) => got.push(`b:${d.text}`));
    assert.ok(router.deliver({ chatId: 'a', text: 'x', kind: 'text' }));
    assert.ok(router.deliver({ chatId: 'b', text: 'y', kind: 'tool' }));
    a.dispose();
    assert.ok(!router.deliver({ chatId: 'a', text: 'late', kind: 'text' }));
    assert.deepStrictEqual(got, ['a:x', 'b:y']);
    assert.strictEqual(router.dropped, 1);
    assert.strictEqual(router.listening, 1);
  });

  it('refuses two listeners for one chat', () => {
    const router = new DeltaRouter();
    router.listen('a', () => undefined);
    assert.throws(() => router.listen('a', () => undefined), /already has a listener/);
  });
});

describe('newChatId', () => {
  it('never repeats within a window', () => {
    const ids = new Set(Array.from({ length: 100 }, () => newChatId()));
    assert.strictEqual(ids.size, 100);
  });
});

describe('toHistory', () => {
  it('keeps user and assistant turns with text', () => {
    assert.deepStrictEqual(toHistory([{ role: 'user', content: 'q' }, { role: 'assistant', content: '  ' }, { role: 'assistant', content: 'a' }]),
      [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }]);
  });
});

describe('findFileReferences', () => {
  const repo = new Set(['calc/ops.py', 'calc/report.py', 'README.md']);
  const exists = (p: string) => repo.has(p);

  it('finds repository files, with a line or a line range when one is named', () => {
    const text = 'See calc/ops.py:6 and calc/report.py:4-8, also ./README.md and calc/ops.py#L2.';
    const refs = findFileReferences(text, exists);
    assert.deepStrictEqual(refs.map((r) => [r.path, r.line, r.endLine]), [
      ['calc/ops.py', 6, undefined], ['calc/report.py', 4, 8], ['README.md', undefined, undefined], ['calc/ops.py', 2, undefined],
    ]);
    assert.strictEqual(text.slice(refs[0].start, refs[0].end), 'calc/ops.py:6');
    assert.strictEqual(text.slice(refs[3].start, refs[3].end), 'calc/ops.py#L2');
  });

  it('ignores words that look like files but are not in the repository', () => {
    assert.deepStrictEqual(findFileReferences('e.g. numpy.ndarray or calc/missing.py or xcalc/ops.py', exists), []);
  });

  it('lists each file and line once', () => {
    const refs = findFileReferences('calc/ops.py calc/ops.py calc/ops.py:3', exists);
    assert.deepStrictEqual(uniqueReferences(refs).map((r) => `${r.path}:${r.line ?? ''}`), ['calc/ops.py:', 'calc/ops.py:3']);
  });
});

describe('questionFromMessages', () => {
  const text = (value: string) => ({ value });
  it('asks the last user message, with the turns before it as history', () => {
    const q = questionFromMessages([
      { role: 1, content: [text('What is add?')] },
      { role: 2, content: [text('It adds.'), { callId: 'x', name: 'tool', input: {} }] },
      { role: 1, content: [text('And mul?')] },
    ]);
    assert.deepStrictEqual(q, { prompt: 'And mul?', history: [{ role: 'user', content: 'What is add?' }, { role: 'assistant', content: 'It adds.' }] });
  });

  it('refuses a request with nothing to answer', () => {
    assert.throws(() => questionFromMessages([{ role: 2, content: [text('hi')] }]), /no user message/);
  });
});
