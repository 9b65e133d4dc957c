#!/usr/bin/env node
// Validate JSON documents against the recipe JSON Schema with ajv, an independent
// Draft 2020-12 validator, the way editors do (tests/test_schema_ajv.py runs it).
//
//   node tools/ajv_check.mjs SCHEMA.json DOC.json...
//
// Two checks, both must pass:
//   strict  Ajv2020 with every strict-mode restriction (strictSchema, strictTypes,
//           strictTuples, strictRequired, strictNumbers): unknown or ignored keywords,
//           a keyword whose type the schema does not state, a required key that is not
//           declared... refuse the schema; only union types (type: [string, number])
//           are allowed. Every document must be valid.
//   editor  what the YAML language server (the modeline's validator) does: meta-validate
//           the schema against the Draft-07 meta-schema (released versions check every
//           schema that way) and the Draft 2020-12 one (newer versions pick it from
//           $schema), then validate every document with a non-strict Ajv2020.
//
// Exit status: 0 all valid; 1 a document is invalid; 2 the schema itself is refused
// (or bad usage). Every error is printed, one per line, with the document's name.
//
// ajv and ajv-formats are looked up in .ci/node_modules (where .ci/run installs them:
// npm install --no-save --prefix .ci ajv@8 ajv-formats@3), then as node looks up any
// package (NODE_PATH included).

import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { createRequire } from "node:module";

const require = createRequire(new URL("../.ci/package.json", import.meta.url));
let Ajv2020, Ajv07, addFormats, draft07;
try {
  Ajv2020 = require("ajv/dist/2020").default;
  Ajv07 = require("ajv").default;
  addFormats = require("ajv-formats").default;
  draft07 = require("ajv/dist/refs/json-schema-draft-07.json");
} catch (error) {
  console.error(`ajv_check: cannot load ajv/ajv-formats (${error.message.split("\n")[0]});`);
  console.error("install them with: npm install --no-save --prefix .ci ajv@8 ajv-formats@3");
  process.exit(2);
}

const [schemaFile, ...docs] = process.argv.slice(2);
if (!schemaFile) {
  console.error("usage: node tools/ajv_check.mjs SCHEMA.json DOC.json...");
  process.exit(2);
}
const schema = JSON.parse(readFileSync(schemaFile, "utf-8"));

const show = (errors) =>
  errors.map((e) => `${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);

function compile(mode, options) {
  const problems = [];
  const note = (...args) => problems.push(args.join(" "));
  const logger = { log() {}, warn: note, error: note };
  const ajv = new Ajv2020({ allErrors: true, logger, ...options });
  addFormats(ajv);
  let validate;
  try {
    validate = ajv.compile(schema);
  } catch (error) {
    problems.push(error.message);
  }
  if (problems.length) {
    for (const problem of problems) console.error(`${mode}: schema refused: ${problem}`);
    process.exit(2);
  }
  return validate;
}

let status = 0;

// editor: meta-validation
const meta07 = new Ajv07({ allErrors: true, strict: false }).compile(draft07);
if (!meta07(schema)) {
  for (const line of show(meta07.errors)) console.error(`editor (draft-07 meta-schema): ${line}`);
  status = 2;
}
const meta2020 = new Ajv2020({ allErrors: true, strict: false });
if (!meta2020.validateSchema(schema)) {
  for (const line of show(meta2020.errors)) console.error(`editor (2020-12 meta-schema): ${line}`);
  status = 2;
}

// strict: what strict: true checks, but logged, so that every problem is reported (not
// only the first) and each one refuses the schema.
const STRICT = "log";
const validators = {
  strict: compile("strict", {
    strictSchema: STRICT, strictTypes: STRICT, strictTuples: STRICT, strictRequired: STRICT,
    strictNumbers: true, allowUnionTypes: true,
  }),
  editor: compile("editor", { strict: false }),
};

for (const doc of docs) {
  const data = JSON.parse(readFileSync(doc, "utf-8"));
  for (const [mode, validate] of Object.entries(validators)) {
    if (!validate(data)) {
      for (const line of show(validate.errors)) console.error(`${basename(doc)}: ${mode}: ${line}`);
      status = Math.max(status, 1);
    }
  }
}
if (status === 0) console.log(`ajv: ${docs.length} document(s) valid (strict and editor modes)`);
process.exit(status);
