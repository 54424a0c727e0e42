/**
 * Runs every `@example` in the JSDoc and every TypeScript block of the
 * Markdown docs, so that `deno test -A` alone proves the documentation true.
 */
import assert from "node:assert/strict";

const DOCUMENTED = ["mod.ts", "src/", "README.md", "docs/"];

Deno.test("docs: JSDoc examples and Markdown code blocks run", async () => {
  const root = new URL("..", import.meta.url);
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    // Read access only: bundledMigrations' example reads migrations/.
    args: ["test", "--doc", "--allow-read", ...DOCUMENTED],
    cwd: root,
    env: { NO_COLOR: "1" },
  }).output();
  const output = new TextDecoder().decode(stdout) +
    new TextDecoder().decode(stderr);
  assert.equal(code, 0, output);
  const summary = output.match(/ok \| (\d+) passed/);
  assert.ok(summary !== null && Number(summary[1]) >= 10, output);
});
