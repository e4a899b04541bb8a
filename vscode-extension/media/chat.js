// The chat panel's page: renders what the extension posts; sends what the user types. Text is only
// ever set with textContent (replies are model output, never HTML).
(function () {
  const vscode = acquireVsCodeApi();
  const log = document.getElementById('log');
  const form = document.getElementById('ask');
  const prompt = document.getElementById('prompt');
  const send = document.getElementById('send');
  const stop = document.getElementById('stop');
  const clear = document.getElementById('clear');
  const replies = new Map();

  function add(cls, text) {
    const el = document.createElement('div');
    el.className = 'msg ' + cls;
    if (text !== undefined) el.textContent = text;
    log.appendChild(el);
    el.scrollIntoView({ block: 'end' });
    return el;
  }

  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    prompt.value = '';
    vscode.postMessage({ type: 'send', text });
  });
  prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener('click', () => vscode.postMessage({ type: 'stop' }));
  clear.addEventListener('click', () => vscode.postMessage({ type: 'clear' }));

  function renderWithLinks(el, text, refs) {
    el.textContent = '';
    let at = 0;
    for (const ref of refs) {
      el.appendChild(document.createTextNode(text.slice(at, ref.start)));
      const a = document.createElement('a');
      a.href = '#';
      a.className = 'file-ref';
      a.textContent = text.slice(ref.start, ref.end);
      a.title = 'Open ' + ref.path + (ref.line ? ':' + ref.line : '');
      a.addEventListener('click', (e) => {
        e.preventDefault();
        vscode.postMessage({ type: 'open', path: ref.path, line: ref.line });
      });
      el.appendChild(a);
      at = ref.end;
    }
    el.appendChild(document.createTextNode(text.slice(at)));
  }

  window.addEventListener('message', (event) => {
    const m = event.data;
    switch (m.type) {
      case 'user':
        add('user', m.text);
        break;
      case 'start': {
        const el = add('assistant');
        el.dataset.state = 'streaming';
        el.dataset.deltas = '0';
        const tools = document.createElement('div');
        tools.className = 'tools';
        const body = document.createElement('div');
        body.className = 'body';
        el.append(tools, body);
        replies.set(m.id, { el, tools, body, streamed: '' });
        busy(true);
        break;
      }
      case 'delta': {
        const r = replies.get(m.id);
        if (!r) break;
        r.el.dataset.deltas = String(Number(r.el.dataset.deltas) + 1);
        if (m.kind === 'tool') {
          const line = document.createElement('div');
          line.textContent = '⚙ ' + m.text;
          r.tools.appendChild(line);
        } else {
          r.streamed += m.text;
          r.body.textContent = r.streamed;
        }
        r.el.scrollIntoView({ block: 'end' });
        break;
      }
      case 'end': {
        const r = replies.get(m.id);
        if (!r) break;
        renderWithLinks(r.body, m.text, m.refs);
        const footer = document.createElement('div');
        footer.className = 'footer';
        footer.textContent = m.footer;
        r.el.appendChild(footer);
        r.el.dataset.state = 'done';
        r.el.dataset.exit = m.exit;
        busy(false);
        break;
      }
      case 'error': {
        const r = replies.get(m.id);
        const el = r ? r.el : add('assistant');
        const note = document.createElement('div');
        note.className = 'error';
        note.textContent = m.message;
        el.appendChild(note);
        el.dataset.state = m.message === 'stopped' ? 'stopped' : 'error';
        busy(false);
        break;
      }
      case 'cleared':
        log.textContent = '';
        replies.clear();
        busy(false);
        break;
    }
  });
})();
