import * as assert from 'assert';
import type { TextEdit, WorkspaceEdit } from 'vscode-languageclient';
import { applyTextEdits, describeChanges, EditError, planChanges, staleChanges } from '../../src/edits';

const edit = (sl: number, sc: number, el: number, ec: number, newText: string): TextEdit => ({
  range: { start: { line: sl, character: sc }, end: { line: el, character: ec } },
  newText,
});

describe('applyTextEdits', () => {
  it('applies edits against the original text, whatever their order', () => {
    const text = 'def add(a, b):\n    return a - b\n';
    const out = applyTextEdits(text, [edit(1, 13, 1, 14, '+'), edit(0, 4, 0, 7, 'plus')]);
    assert.strictEqual(out, 'def plus(a, b):\n    return a + b\n');
  });

  it('counts positions in UTF-16 code units and keeps CRLF line ends', () => {
    const text = 'x = "😀é"\r\ny = 1\r\n';
    // 😀 is two UTF-16 units: the closing quote is at character 8
    assert.strictEqual(applyTextEdits(text, [edit(0, 8, 0, 9, "'")]), 'x = "😀é\'\r\ny = 1\r\n');
    assert.strictEqual(applyTextEdits(text, [edit(1, 4, 1, 99, '2')]), 'x = "😀é"\r\ny = 2\r\n');
  });

  it('clamps positions past the end of a line or the text, as editors do', () => {
    assert.strictEqual(applyTextEdits('ab\ncd', [edit(0, 10, 1, 0, '')]), 'abcd');
    assert.strictEqual(applyTextEdits('ab\n', [edit(5, 0, 5, 0, 'tail\n')]), 'ab\ntail\n');
  });

  it('inserts at the same position in the order given', () => {
    assert.strictEqual(applyTextEdits('x', [edit(0, 0, 0, 0, 'a'), edit(0, 0, 0, 0, 'b')]), 'abx');
  });

  it('refuses overlapping ranges', () => {
    assert.throws(() => applyTextEdits('abcdef', [edit(0, 0, 0, 3, 'x'), edit(0, 2, 0, 4, 'y')]), EditError);
  });
});

describe('planChanges', () => {
  const files: Record<string, string> = {
    'file:///r/calc/ops.py': 'def add(a, b):\n    return a - b\n',
    'file:///r/old.py': 'gone\n',
  };
  const read = (uri: string) => files[uri];

  it('turns versioned document edits, creations and deletions into before/after pairs', () => {
    const ws: WorkspaceEdit = {
      documentChanges: [
        { textDocument: { uri: 'file:///r/calc/ops.py', version: 3 }, edits: [edit(1, 13, 1, 14, '+')] },
        { kind: 'create', uri: 'file:///r/tests/test_new.py' },
        { textDocument: { uri: 'file:///r/tests/test_new.py', version: null }, edits: [edit(0, 0, 0, 0, 'def test_x():\n    pass\n')] },
        { kind: 'delete', uri: 'file:///r/old.py' },
      ],
    };
    const changes = planChanges(ws, read);
    assert.deepStrictEqual(changes.map((c) => [c.uri, c.kind, c.version]), [
      ['file:///r/calc/ops.py', 'modify', 3],
      ['file:///r/tests/test_new.py', 'create', null],
      ['file:///r/old.py', 'delete', null],
    ]);
    assert.strictEqual(changes[0].after, 'def add(a, b):\n    return a + b\n');
    assert.strictEqual(changes[1].before, '');
    assert.strictEqual(changes[1].after, 'def test_x():\n    pass\n');
    assert.strictEqual(changes[2].before, 'gone\n');
    assert.strictEqual(changes[2].after, '');
    assert.strictEqual(describeChanges(changes, (u) => u.replace('file:///r/', '')), 'calc/ops.py, tests/test_new.py (new), old.py (deleted)');
  });

  it('reads the plain `changes` map too, and leaves out edits that change nothing', () => {
    const ws: WorkspaceEdit = { changes: { 'file:///r/calc/ops.py': [edit(0, 4, 0, 7, 'add')] } };
    assert.deepStrictEqual(planChanges(ws, read), []);
  });

  it('says which file is the problem when an edit cannot be made', () => {
    assert.throws(() => planChanges({ changes: { 'file:///r/missing.py': [] } }, read), /missing\.py, which does not exist/);
    assert.throws(() => planChanges({ documentChanges: [{ kind: 'create', uri: 'file:///r/old.py' }] }, read), /old\.py, which already exists/);
    assert.throws(() => planChanges({ documentChanges: [{ kind: 'rename', oldUri: 'file:///r/old.py', newUri: 'file:///r/new.py' }] }, read), /renames are not supported/);
    assert.deepStrictEqual(planChanges({ documentChanges: [{ kind: 'create', uri: 'file:///r/old.py', options: { ignoreIfExists: true } }] }, read), []);
  });

  it('a file created and deleted again is no change', () => {
    const ws: WorkspaceEdit = { documentChanges: [{ kind: 'create', uri: 'file:///r/tmp.py' }, { kind: 'delete', uri: 'file:///r/tmp.py' }] };
    assert.deepStrictEqual(planChanges(ws, read), []);
  });
});

describe('staleChanges', () => {
  it('finds the open documents whose version moved since the edit was made', () => {
    const changes = planChanges({
      documentChanges: [
        { textDocument: { uri: 'file:///a.py', version: 2 }, edits: [edit(0, 0, 0, 0, '#')] },
        { textDocument: { uri: 'file:///b.py', version: 5 }, edits: [edit(0, 0, 0, 0, '#')] },
        { textDocument: { uri: 'file:///c.py', version: null }, edits: [edit(0, 0, 0, 0, '#')] },
      ],
    }, () => 'x\n');
    const versions: Record<string, number> = { 'file:///a.py': 2, 'file:///b.py': 6 };
    assert.deepStrictEqual(staleChanges(changes, (u) => versions[u]).map((c) => c.uri), ['file:///b.py']);
    // a document that was closed since counts as moved on: its edit was made against the editor's copy
    assert.deepStrictEqual(staleChanges(changes, () => undefined).map((c) => c.uri), ['file:///a.py', 'file:///b.py']);
  });
});
