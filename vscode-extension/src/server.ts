/**
 * The language server connection: finds and starts `swespot serve` over stdio with
 * vscode-languageclient, keeps it told about settings, and routes its notifications. Everything else
 * talks to the server through this object.
 */
import * as fs from 'fs';
import * as vscode from 'vscode';
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  LanguageClient,
  LanguageClientOptions,
  Middleware,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';
import * as P from './protocol';
import { DeltaRouter } from './chatText';
import { Launch, LaunchError, resolveLaunch } from './serverCommand';
import { affectsLaunch, affectsServer, serverSettings, ServerSettingKey } from './settings';

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return isFile(file);
  } catch {
    return false;
  }
}

export function readServerSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration('swespot');
  return serverSettings((key: ServerSettingKey) => config.get(key));
}

export function launchFromSettings(): Launch {
  const config = vscode.workspace.getConfiguration('swespot');
  return resolveLaunch({
    serverPath: config.get<string>('server.path', '').trim(),
    python: config.get<string>('server.python', '').trim(),
    model: config.get<string>('model', '').trim(),
    folders: (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file').map((f) => f.uri.fsPath),
    envPath: process.env.PATH ?? '',
    isExecutable,
    isFile,
  });
}

export interface ServerEvents {
  onStatus(status: P.StatusParams): void;
  /** The server could not be started, or stopped for good. */
  onFailure(message: string, error?: LaunchError): void;
}

export class SwespotServer implements vscode.Disposable {
  client: LanguageClient | undefined;
  readonly deltas = new DeltaRouter();
  lastStatus: P.StatusParams | undefined;
  private readonly disposables: vscode.Disposable[] = [];
  private starting: Promise<void> | undefined;
  private restarting: Promise<void> = Promise.resolve();

  constructor(
    private readonly log: vscode.LogOutputChannel,
    private readonly middleware: Middleware,
    private readonly events: ServerEvents,
  ) {
    this.disposables.push(vscode.workspace.onDidChangeConfiguration((e) => this.configurationChanged(e)));
  }

  /** Start the server (once; a second call waits for the first). Failures are reported, not thrown. */
  start(): Promise<void> {
    this.starting ??= this.doStart().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async doStart(): Promise<void> {
    let launch: Launch;
    try {
      launch = launchFromSettings();
    } catch (err) {
      const error = err instanceof LaunchError ? err : undefined;
      const message = err instanceof Error ? err.message : String(err);
      this.log.error(message);
      this.events.onFailure(message, error);
      return;
    }
    this.log.info(`starting ${launch.command} ${launch.args.join(' ')} (from ${launch.source})`);
    // no `transport`: stdio is the default, and TransportKind.stdio would append a --stdio argument
    const serverOptions: ServerOptions = {
      command: launch.command,
      args: launch.args,
      options: { cwd: launch.repo, env: { ...process.env, PYTHONUNBUFFERED: '1' } },
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: 'file' }],
      outputChannel: this.log,
      initializationOptions: readServerSettings(),
      middleware: {
        ...this.middleware,
        workspace: {
          // the server refuses unknown keys: answer the `swespot` section with its own keys only
          configuration: async (params, token, next) => {
            const answers = await next(params, token);
            if (!Array.isArray(answers)) {
              return answers;
            }
            return params.items.map((item, i) => (item.section === 'swespot' ? readServerSettings() : answers[i]));
          },
        },
      },
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue }),
        closed: () => {
          this.events.onFailure('the SWE-Spot language server stopped; see the SWE-Spot output for why');
          return { action: CloseAction.DoNotRestart };
        },
      },
    };
    const client = new LanguageClient('swespot', 'SWE-Spot', serverOptions, clientOptions);
    this.client = client;
    this.disposables.push(
      client.onNotification(P.STATUS, (status: P.StatusParams) => {
        this.lastStatus = status;
        this.events.onStatus(status);
      }),
      client.onNotification(P.CHAT_DELTA, (delta: P.ChatDelta) => {
        this.deltas.deliver(delta);
      }),
    );
    try {
      await client.start();
    } catch (err) {
      const message = `could not start the SWE-Spot language server (${launch.command}): ${err instanceof Error ? err.message : String(err)}`;
      this.log.error(message);
      this.client = undefined;
      this.events.onFailure(message, new LaunchError(message, 'chooseServer'));
      return;
    }
    const status = await client.sendRequest<P.StatusParams>(P.GET_STATUS, {});
    this.lastStatus ??= status;
    this.events.onStatus(this.lastStatus);
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client && client.state !== State.Stopped) {
      await client.stop();
    }
  }

  /** Stop and start again with the current settings; restarts asked for meanwhile run one after another. */
  restart(): Promise<void> {
    this.restarting = this.restarting.then(async () => {
      await this.starting?.catch(() => undefined);
      await this.stop();
      this.lastStatus = undefined;
      await this.start();
    });
    return this.restarting;
  }

  /** The running client, or an error the user can act on. */
  ready(): LanguageClient {
    if (!this.client || this.client.state !== State.Running) {
      throw new Error('the SWE-Spot language server is not running (see the status bar item for why)');
    }
    return this.client;
  }

  request<R>(method: string, params: unknown, token?: vscode.CancellationToken): Promise<R> {
    const client = this.ready();
    // an explicit `undefined` token would be sent as a second parameter (params become a list)
    return token ? client.sendRequest<R>(method, params, token) : client.sendRequest<R>(method, params);
  }

  notify(method: string, params: unknown): void {
    void this.client?.sendNotification(method, params);
  }

  private configurationChanged(e: vscode.ConfigurationChangeEvent): void {
    if (affectsLaunch((s) => e.affectsConfiguration(s))) {
      this.log.info('the server settings changed: restarting the language server');
      void this.restart();
      return;
    }
    if (affectsServer((s) => e.affectsConfiguration(s))) {
      this.pushSettings();
    }
  }

  /** Tell the server the current settings now (a request sent after this sees them). */
  pushSettings(): void {
    if (this.client?.state !== State.Running) {
      return;
    }
    const settings = readServerSettings();
    this.log.info(`settings sent to the server: ${JSON.stringify(settings)}`);
    void this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: { swespot: settings } });
    if (this.lastStatus) {
      this.events.onStatus(this.lastStatus); // settings show in the status (e.g. the agent model)
    }
  }

  dispose(): void {
    this.disposables.forEach((d) => d.dispose());
    void this.stop();
  }
}

/** True for the error an LSP request ends with when it was cancelled. */
export function isCancellation(err: unknown): boolean {
  const code = (err as { code?: number } | undefined)?.code;
  return code === P.REQUEST_CANCELLED || err instanceof vscode.CancellationError;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
