/**
 * Which of the extension's settings belong to the language server, and in what shape it wants them.
 *
 * The server (lsp_server/settings.py) refuses unknown keys, so the `swespot` section it is sent holds
 * exactly its own keys; settings that only the extension reads (how to start the server, tracing,
 * turning ghost text off) live under sub-objects and are never sent.
 */

/** The server's settings, camelCase, in lsp_server/settings.py's order. */
export const SERVER_SETTING_KEYS = [
  'model',
  'agentModel',
  'threads',
  'contextSize',
  'gpuLayers',
  'backgroundTraining',
  'excludedPaths',
  'feedbackLogging',
  'completionMaxTokens',
  'completionDebounceMs',
  'completionMaxMs',
  'completionContextTokens',
  'chatMaxTokens',
  'chatMaxSteps',
  'taskMaxSteps',
  'adapterPollS',
] as const;

export type ServerSettingKey = (typeof SERVER_SETTING_KEYS)[number];

/** Settings only the extension reads (keys below `swespot.`). */
export const EXTENSION_SETTING_KEYS = ['server.path', 'server.python', 'trace.server', 'inlineCompletion.enabled'] as const;

/**
 * The `swespot` section as the server wants it. `read(key)` returns the effective value of
 * `swespot.<key>` (VS Code answers with the contributed default when the user set nothing), or
 * undefined when the key is unknown to the editor. Undefined values are left out: the server keeps its
 * own default.
 */
export function serverSettings(read: (key: ServerSettingKey) => unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_SETTING_KEYS) {
    const value = read(key);
    if (value !== undefined) {
      out[key] = value;
    }
  }
  return out;
}

/** Whether a configuration change touches what the server sees (so it must be told). */
export function affectsServer(affects: (section: string) => boolean): boolean {
  return SERVER_SETTING_KEYS.some((key) => affects(`swespot.${key}`));
}

/**
 * Whether a change needs a new server process: how it is started, or the model (checked before the
 * start, so a missing file is reported with a fix instead of as a failed load; the server reloads the
 * model on a change anyway).
 */
export function affectsLaunch(affects: (section: string) => boolean): boolean {
  return affects('swespot.server') || affects('swespot.model');
}
