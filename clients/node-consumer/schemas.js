'use strict';
// Compiles the committed JSON Schema files (draft 2020-12) once: ce_type -> { validate, topic }.

const fs = require('node:fs');
const path = require('node:path');
const Ajv2020 = require('ajv/dist/2020');
const addFormats = require('ajv-formats');

function loadValidators(directory) {
  const ajv = new Ajv2020({ allErrors: true, strict: true });
  addFormats(ajv); // "format": "date-time" is checked, not just annotated
  // The contract's own annotations: the type, its version, its topic, and (on a retired version's frozen
  // schema, kept so the old records in the log still validate) the type that replaced it.
  ajv.addVocabulary(['x-cloudevents-type', 'x-version', 'x-topic', 'x-superseded-by']);
  const validators = new Map();
  const files = fs.readdirSync(directory).filter((name) => name.endsWith('.schema.json')).sort();
  if (files.length === 0) throw new Error(`no *.schema.json files in ${directory}`);
  for (const name of files) {
    const schema = JSON.parse(fs.readFileSync(path.join(directory, name), 'utf8'));
    const type = schema['x-cloudevents-type'];
    if (!type || `${type}.schema.json` !== name) throw new Error(`${name}: x-cloudevents-type does not match the file name`);
    if (!type.endsWith(`.v${schema['x-version']}`)) throw new Error(`${name}: x-version does not match the type`);
    validators.set(type, { validate: ajv.compile(schema), topic: schema['x-topic'] });
  }
  return validators;
}

// ce_time: RFC 3339, checked by the same rules as a schema's "format": "date-time".
const isDateTime = (() => {
  const ajv = new Ajv2020({ strict: true });
  addFormats(ajv, ['date-time']);
  return ajv.compile({ type: 'string', format: 'date-time' });
})();

module.exports = { isDateTime, loadValidators };
