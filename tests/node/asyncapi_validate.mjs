// Validates an AsyncAPI document with the official parser (@asyncapi/parser): prints one JSON line
// {"errors": [...], "warnings": n} and exits non-zero when the document has errors.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(process.argv[2], "utf8"));
const errors = diagnostics.filter((d) => d.severity === 0)
  .map((d) => ({ message: d.message, path: d.path.join("/") }));
console.log(JSON.stringify({ errors, warnings: diagnostics.length - errors.length, parsed: document !== undefined }));
process.exit(errors.length || document === undefined ? 1 : 0);
