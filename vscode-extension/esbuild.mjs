// Bundles the extension into dist/extension.js (vscode is provided by the editor) and, with --tests,
// the in-editor test suite into out/test/suite/ (mocha bundled in, so the packaged extension needs no
// node_modules).
import * as esbuild from 'esbuild';

const common = { bundle: true, platform: 'node', format: 'cjs', target: 'node20', external: ['vscode'], sourcemap: true, logLevel: 'warning' };
await esbuild.build({ ...common, entryPoints: ['src/extension.ts'], outfile: 'dist/extension.js', minify: process.argv.includes('--minify') });
if (process.argv.includes('--tests')) {
  // mocha's parallel mode (require.resolve of its workers) is not used in the editor: its warnings are noise
  await esbuild.build({ ...common, entryPoints: ['test/suite/index.ts'], outfile: 'out/test/suite/index.js', logLevel: 'error' });
}
