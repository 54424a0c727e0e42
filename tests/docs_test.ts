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

interface DocTag {
  kind: string;
}
interface JsDoc {
  doc?: string;
  tags?: DocTag[];
}
interface Callable {
  name?: string;
  jsDoc?: JsDoc;
}
interface Declaration {
  kind: string;
  jsDoc?: JsDoc;
  def?: {
    constructors?: Callable[];
    methods?: Callable[];
    extends?: string;
  };
}

/**
 * Says what it throws: a `@throws` tag, the words "Never throws", or a doc
 * inherited from the contract (checked there).
 */
function saysWhatItThrows(jsDoc: JsDoc | undefined): boolean {
  const doc = jsDoc?.doc ?? "";
  return (jsDoc?.tags ?? []).some((tag) => tag.kind === "throws") ||
    /Never throws/.test(doc) || /\{@inheritDoc [\w.]+\}/.test(doc);
}

Deno.test("docs: every public function, constructor and method says what it throws", async () => {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", "mod.ts"],
    cwd: new URL("..", import.meta.url),
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  const json = JSON.parse(new TextDecoder().decode(stdout));
  const module = Object.values(json.nodes)[0] as {
    symbols: { name: string; declarations: Declaration[] }[];
  };
  // Interfaces that the application implements (a codec, an aggregate, a
  // postgres.js instance) describe a contract, not behaviour of ours; and
  // constructing an error does not throw.
  const implementedByTheApplication = new Set(["Codec", "Aggregate", "Sql"]);
  const silent: string[] = [];
  let checked = 0;
  for (const symbol of module.symbols) {
    for (const declaration of symbol.declarations) {
      const { kind, def } = declaration;
      if (kind === "function") {
        checked++;
        if (!saysWhatItThrows(declaration.jsDoc)) silent.push(symbol.name);
      }
      const isError = def?.extends === "Error" ||
        def?.extends === "EventStoreError";
      if (kind === "class" && !isError) {
        for (const constructor of def?.constructors ?? []) {
          checked++;
          if (!saysWhatItThrows(constructor.jsDoc)) {
            silent.push(`new ${symbol.name}`);
          }
        }
      }
      if (
        (kind === "class" && !isError) ||
        (kind === "interface" && !implementedByTheApplication.has(symbol.name))
      ) {
        for (const method of def?.methods ?? []) {
          checked++;
          if (!saysWhatItThrows(method.jsDoc)) {
            silent.push(`${symbol.name}.${method.name}`);
          }
        }
      }
    }
  }
  assert.deepEqual(silent, []);
  assert.ok(checked > 20, `only ${checked} callables checked`);
});
