/**
 * How the language server is started: which `swespot` (or which Python) and with what arguments, or
 * why it cannot be, in words that say how to fix it. Pure (the file system is passed in), so every
 * case is unit-tested.
 */
import * as path from 'path';

export interface LaunchInput {
  /** `swespot.server.path`: the `swespot` executable, e.g. CHECKOUT/.venv/bin/swespot. */
  serverPath: string;
  /** `swespot.server.python`: a Python that has SWE-Spot Local installed (runs `-m swespot`). */
  python: string;
  /** `swespot.model`: a GGUF file, or empty for the server's default. */
  model: string;
  /** File-system paths of the workspace folders; the first one is the repository served. */
  folders: string[];
  /** The PATH to search for `swespot`. */
  envPath: string;
  isExecutable(file: string): boolean;
  isFile(file: string): boolean;
}

export interface Launch {
  command: string;
  args: string[];
  repo: string;
  /** Where the command came from, for the log. */
  source: string;
}

/** What a launch problem is about; the extension offers a fix for each. */
export type LaunchFix = 'chooseServer' | 'choosePython' | 'chooseModel' | 'openFolder';

export class LaunchError extends Error {
  constructor(message: string, readonly fix: LaunchFix) {
    super(message);
    this.name = 'LaunchError';
  }
}

const SETUP_HINT = 'run ./scripts/setup in your SWE-Spot Local checkout, then set swespot.server.path to its .venv/bin/swespot';

export function resolveLaunch(input: LaunchInput): Launch {
  const repo = input.folders[0];
  if (!repo) {
    throw new LaunchError('SWE-Spot works on a repository: open a folder first.', 'openFolder');
  }
  if (input.model && !input.isFile(input.model)) {
    throw new LaunchError(`swespot.model is ${input.model}, which is not a file: choose the model's GGUF file.`, 'chooseModel');
  }
  const serve = ['serve', '--repo', repo];
  if (input.serverPath) {
    if (!input.isFile(input.serverPath)) {
      throw new LaunchError(`swespot.server.path is ${input.serverPath}, which does not exist: ${SETUP_HINT}.`, 'chooseServer');
    }
    if (!input.isExecutable(input.serverPath)) {
      throw new LaunchError(`swespot.server.path is ${input.serverPath}, which is not executable.`, 'chooseServer');
    }
    return { command: input.serverPath, args: serve, repo, source: 'swespot.server.path' };
  }
  if (input.python) {
    if (!input.isExecutable(input.python)) {
      throw new LaunchError(`swespot.server.python is ${input.python}, which is not an executable Python: choose the python of the virtual environment that has SWE-Spot Local installed (its .venv/bin/python).`, 'choosePython');
    }
    return { command: input.python, args: ['-m', 'swespot', ...serve], repo, source: 'swespot.server.python' };
  }
  for (const folder of input.folders) {
    const venv = path.join(folder, '.venv', 'bin', 'swespot');
    if (input.isExecutable(venv)) {
      return { command: venv, args: serve, repo, source: `the workspace's ${path.join('.venv', 'bin', 'swespot')}` };
    }
  }
  for (const dir of input.envPath.split(path.delimiter).filter(Boolean)) {
    const candidate = path.join(dir, 'swespot');
    if (input.isExecutable(candidate)) {
      return { command: candidate, args: serve, repo, source: 'PATH' };
    }
  }
  throw new LaunchError(`SWE-Spot's language server (swespot) was not found in swespot.server.path, the workspace's .venv or PATH: ${SETUP_HINT}.`, 'chooseServer');
}
