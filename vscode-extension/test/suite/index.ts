// Entry point of the extension's in-editor test suite (extensionTestsPath): VS Code calls run() inside
// its extension host; a rejection makes the editor exit with a failure code. Mocha is bundled in.
import Mocha from 'mocha';

export function run(): Promise<void> {
  const mocha = new Mocha({ ui: 'bdd', timeout: 120_000, color: false, reporter: 'spec' });
  mocha.suite.emit('pre-require', globalThis, 'features.test', mocha);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  require('./features.test');
  return new Promise((resolve, reject) => {
    mocha.run((failures) => (failures ? reject(new Error(`${failures} test(s) failed`)) : resolve()));
  });
}
