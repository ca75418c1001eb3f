// Runs the npm GPT-2 encoders (gpt-3-encoder's Encoder.js, gpt-tokenizer's r50k_base) for hdlm's tests and
// benchmark. Usage: node js_tokenizers.js CACHE_DIR MODE ENCODER [FILE...]
//   CACHE_DIR  the .cache/ folder that tools/setup.sh fills
//   ENCODER    gpt-3-encoder | gpt-tokenizer
//   FILE       a text file, or @LIST: the files named in LIST, one per line
//   MODE ids     one line of space-separated ids per FILE
//        strings a JSON array of strings on stdin -> a JSON array of id arrays on stdout
//        bench   encodes all FILEs (read first, not timed) and prints one JSON line {bytes, tokens, seconds}
'use strict';
const fs = require('fs');
const path = require('path');

const [cacheArg, mode, encoderName, ...fileArgs] = process.argv.slice(2);
const files = fileArgs.flatMap((a) =>
  a.startsWith('@') ? fs.readFileSync(a.slice(1), 'utf8').split('\n').filter((l) => l.length > 0) : [a]);
const cacheDir = cacheArg && path.resolve(cacheArg);
if (!cacheArg || !mode || !encoderName) {
  process.stderr.write('usage: node js_tokenizers.js CACHE_DIR ids|strings|bench gpt-3-encoder|gpt-tokenizer [FILE...]\n');
  process.exit(2);
}

let encode;
if (encoderName === 'gpt-3-encoder') {
  encode = require(path.join(cacheDir, 'gpt-3-encoder', 'Encoder.js')).encode;
} else if (encoderName === 'gpt-tokenizer') {
  // Special-token strings are plain text for hdlm (EOT is appended by id), so none is disallowed.
  const r50k = require(path.join(cacheDir, 'gpt-tokenizer', 'cjs', 'encoding', 'r50k_base.js'));
  encode = (text) => r50k.encode(text, { disallowedSpecial: new Set() });
} else {
  process.stderr.write(`unknown encoder '${encoderName}'\n`);
  process.exit(2);
}

if (mode === 'ids') {
  for (const f of files) process.stdout.write(encode(fs.readFileSync(f, 'utf8')).join(' ') + '\n');
} else if (mode === 'strings') {
  const strings = JSON.parse(fs.readFileSync(0, 'utf8'));
  process.stdout.write(JSON.stringify(strings.map((s) => encode(s))) + '\n');
} else if (mode === 'bench') {
  const texts = files.map((f) => fs.readFileSync(f, 'utf8'));
  const bytes = files.reduce((sum, f) => sum + fs.statSync(f).size, 0);
  const start = process.hrtime.bigint();
  let tokens = 0;
  for (const t of texts) tokens += encode(t).length;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  process.stdout.write(JSON.stringify({ bytes, tokens, seconds }) + '\n');
} else {
  process.stderr.write(`unknown mode '${mode}'\n`);
  process.exit(2);
}
