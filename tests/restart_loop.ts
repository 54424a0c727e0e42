/**
 * `deno task test:restarts [--times N]`: runs the restart test of
 * tests/faults_test.ts (16 writers append while PostgreSQL restarts, with the
 * store's default options) N times in a row, 10 by default, each in a fresh
 * `deno test` process with a cluster of its own, and stops at the first
 * failure. A hang that shows once in a few runs is what it is for; CI runs it
 * three times.
 *
 * @module
 */

const FILTER = "PostgreSQL restarts";

let times = 10;
for (let index = 0; index < Deno.args.length; index++) {
  if (Deno.args[index] === "--times") times = Number(Deno.args[++index]);
  else throw new Error(`Unknown argument ${Deno.args[index]}`);
}
if (!Number.isInteger(times) || times < 1) {
  throw new Error("--times takes a whole number of at least 1");
}

const file = new URL("./faults_test.ts", import.meta.url).pathname;
for (let run = 1; run <= times; run++) {
  const started = performance.now();
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", file, "--filter", FILTER],
    env: { NO_COLOR: "1" },
    stdin: "null",
  }).output();
  const output = new TextDecoder().decode(stdout) +
    new TextDecoder().decode(stderr);
  const summary = output.split("\n").find((line) =>
    line.startsWith("restart under load:")
  );
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  console.log(
    `run ${run}/${times}: ${code === 0 ? "ok" : "FAILED"} in ${seconds} s; ${
      summary ?? "no summary"
    }`,
  );
  if (code !== 0) {
    console.log(output);
    console.log(`restart runs: ${run - 1} passed, 1 failed`);
    Deno.exit(1);
  }
}
console.log(`restart runs: ${times} passed, 0 failed`);
