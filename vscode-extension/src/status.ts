/** The status bar's words for the server's `swespot/status`. Pure: the controller puts them on screen. */
import type { AdaptersResult, StatusParams } from './protocol';

export interface StatusView {
  /** Status bar text, with codicons. */
  text: string;
  /** One line per fact, for the tooltip and the status menu. */
  details: string[];
  /** What a screen reader says (and what tests read from the DOM's aria-label). */
  label: string;
  severity: 'ok' | 'busy' | 'error';
}

export function shortCommit(commit?: string): string | undefined {
  return commit ? commit.slice(0, 7) : undefined;
}

export function trainingWords(status: StatusParams): string {
  const d = status.daemon;
  if (!d.enabled) {
    return 'background training paused';
  }
  if (!d.available) {
    return 'background training unavailable';
  }
  if (d.error) {
    return `training error: ${d.error}`;
  }
  if (!d.running) {
    return 'background training not running';
  }
  const phase = d.phase ?? 'idle';
  return d.progress !== undefined && d.progress !== null ? `${phase} ${Math.round(d.progress * 100)}%` : phase;
}

export function describeStatus(status: StatusParams | undefined, agentModel = ''): StatusView {
  if (!status) {
    return { text: '$(sync~spin) SWE-Spot', details: ['starting the language server'], label: 'SWE-Spot starting', severity: 'busy' };
  }
  const adapter = status.adapter
    ? `adapter ${status.adapter.version}` + (status.adapter.commit ? ` (commit ${shortCommit(status.adapter.commit)})` : '')
    : 'no adapter (base model)';
  const training = trainingWords(status);
  const icon: Record<string, string> = {
    starting: '$(sync~spin)', loading: '$(sync~spin)', generating: '$(loading~spin)', ready: '$(hubot)', error: '$(error)',
  };
  let text = `${icon[status.state] ?? '$(hubot)'} SWE-Spot`;
  if (status.state !== 'ready') {
    text += `: ${status.state}`;
  }
  if (status.model) {
    text += ` · ${status.model.replace(/\.gguf$/i, '')}`;
  }
  text += status.adapter ? ` · ${status.adapter.version}` + (status.adapter.commit ? `@${shortCommit(status.adapter.commit)}` : '') : ' · base';
  if (status.daemon.enabled && status.daemon.running && status.daemon.phase && status.daemon.phase !== 'idle') {
    text += ` · $(mortar-board) ${training}`;
  }
  const details = [
    `state: ${status.state}`,
    `model: ${status.model ?? 'not loaded'}`,
    adapter,
    training,
  ];
  if (agentModel) {
    details.push(`chat and tasks: ${agentModel}`);
  }
  if (status.swapMs !== undefined && status.swapMs !== null) {
    details.push(`last adapter swap: ${status.swapMs.toFixed(1)} ms`);
  }
  if (status.message) {
    details.push(status.message);
  }
  if (status.error) {
    details.push(`error: ${status.error}`);
  }
  const severity = status.state === 'error' || status.error ? 'error' : status.state === 'ready' ? 'ok' : 'busy';
  return { text, details, label: `SWE-Spot ${details.join(', ')}`, severity };
}

/** The evaluation report to open: the served version's, else the current one's, else the newest with one. */
export function reportToOpen(result: AdaptersResult): { version: string; report: string } | undefined {
  const withReport = result.versions.filter((v) => v.usable && v.report);
  const pick = withReport.find((v) => v.version === result.serving)
    ?? withReport.find((v) => v.version === result.current)
    ?? withReport[withReport.length - 1];
  return pick?.report ? { version: pick.version, report: pick.report } : undefined;
}
