// The middle of the multi-service chain: an uninstrumented node `http` server that calls an HTTPS backend.
//
// usage: node chain_node.js BACKEND_HTTPS_URL CA_CERT_PATH      (e.g. https://127.0.0.1:1234 /tmp/c.pem)
//
// Listens on 127.0.0.1, a free port, and prints "PORT <n>" on stdout once listening. Everything runs on the one
// event-loop thread. Backend calls use one https.Agent({keepAlive: true, maxSockets: 64}) made at startup, trusting
// CA_CERT_PATH, so TLS connections to the backend are pooled and reused across requests. Keep-alive is on for
// incoming connections too.
//
// Routes (GET):
//   /stock/<id>          one https.get BACKEND/price/<id>, issued synchronously in the request handler, then
//                        200 "stock <id> <backend body>"
//   /stock-delayed/<id>  the same, but the backend call is made from a 50 ms setTimeout (an async gap)
//   /fanout/<id>         two parallel backend calls, /price/<id>a and /price/<id>b, then
//                        200 "fanout <id> <body a> <body b>" once both are done
//   anything else        404
// A backend failure (error or non-200 status) answers 502. Every reply has a Content-Length.
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");

const [backendUrl, caPath] = process.argv.slice(2);
if (!backendUrl || !caPath) {
  process.stderr.write("usage: node chain_node.js BACKEND_HTTPS_URL CA_CERT_PATH\n");
  process.exit(2);
}
const backendBase = backendUrl.replace(/\/+$/, "");
const ca = fs.readFileSync(caPath);
const agent = new https.Agent({ keepAlive: true, maxSockets: 64 });

function reply(res, status, body) {
  res.writeHead(status, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

// GET BACKEND<path>; cb(err, body) exactly once.
function backendGet(path, cb) {
  let done = false;
  const finish = (err, body) => {
    if (!done) {
      done = true;
      cb(err, body);
    }
  };
  const req = https.get(`${backendBase}${path}`, { ca, agent }, (resp) => {
    const chunks = [];
    resp.on("data", (c) => chunks.push(c));
    resp.on("end", () => {
      if (resp.statusCode !== 200) {
        finish(new Error(`backend status ${resp.statusCode}`));
      } else {
        finish(null, Buffer.concat(chunks).toString());
      }
    });
    resp.on("error", finish);
  });
  req.on("error", finish);
}

function stock(res, id) {
  backendGet(`/price/${id}`, (err, body) => {
    if (err) {
      reply(res, 502, `bad gateway: ${err.message}\n`);
    } else {
      reply(res, 200, `stock ${id} ${body}`);
    }
  });
}

function fanout(res, id) {
  const bodies = [null, null];
  let pending = 2;
  let failed = false;
  ["a", "b"].forEach((suffix, i) => {
    backendGet(`/price/${id}${suffix}`, (err, body) => {
      if (failed) return;
      if (err) {
        failed = true;
        reply(res, 502, `bad gateway: ${err.message}\n`);
        return;
      }
      bodies[i] = body;
      if (--pending === 0) reply(res, 200, `fanout ${id} ${bodies[0]} ${bodies[1]}`);
    });
  });
}

const server = http.createServer((req, res) => {
  req.resume(); // drain any body
  const path = new URL(req.url, "http://localhost").pathname;
  if (req.method === "GET" && path.startsWith("/stock/")) {
    stock(res, path.slice("/stock/".length));
  } else if (req.method === "GET" && path.startsWith("/stock-delayed/")) {
    const id = path.slice("/stock-delayed/".length);
    setTimeout(() => stock(res, id), 50);
  } else if (req.method === "GET" && path.startsWith("/fanout/")) {
    fanout(res, path.slice("/fanout/".length));
  } else {
    reply(res, 404, "not found\n");
  }
});
server.keepAliveTimeout = 60000; // an idle test connection must not be closed between requests

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
