// A node `https` client for the integration tests, paused until it reads "go" on stdin.
//
// usage: node node_https_client.js [--at-once] CA_FILE URL...
//
// Prints "paused", waits for a "go" line, then GETs each URL in turn over ONE keep-alive connection
// (an https.Agent with keepAlive and maxSockets 1, trusting CA_FILE). Prints a JSON list with one
// {"url", "status", "error", "local_port"} per URL, then stays alive until stdin closes (the same
// protocol as http_client.py, driven by helpers.PausedClient).
//
// With --at-once it neither pauses nor waits: it makes its requests as soon as it starts, prints the
// list and exits. Its first TLS call then comes a few tens of milliseconds after exec: what a tracer
// that hooks a new process late would miss.
"use strict";

const fs = require("fs");
const https = require("https");
const readline = require("readline");

const atOnce = process.argv[2] === "--at-once";
const [caPath, ...urls] = process.argv.slice(atOnce ? 3 : 2);
const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: fs.readFileSync(caPath) });

function get(url) {
  return new Promise((resolve) => {
    const req = https.get(url, { agent, timeout: 10000 }, (res) => {
      const localPort = res.socket.localPort; // read now: after "end" the socket goes back to the pool
      res.resume();
      res.on("end", () => resolve({ url, status: res.statusCode, error: null, local_port: localPort }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (err) => resolve({ url, status: null, error: err.code || err.message, local_port: null }));
  });
}

async function run() {
  const out = [];
  for (const url of urls) {
    out.push(await get(url)); // sequential: the next request reuses the same socket
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

if (atOnce) {
  run().then(() => agent.destroy());
} else {
  const input = readline.createInterface({ input: process.stdin });
  let started = false;
  input.on("line", (line) => {
    if (!started && line.trim() === "go") {
      started = true;
      run();
    }
  });
  input.on("close", () => {
    agent.destroy();
    process.exit(0);
  });
  process.stdout.write("paused\n");
}
