// An uninstrumented node `https` server for the integration tests.
//
// usage: node node_https.js CERT KEY
//
// Listens on 127.0.0.1, a free port, and prints "PORT <n>" on stdout once listening. Node links
// OpenSSL statically (SSL_read/SSL_write live in the node binary) and feeds it through memory BIOs,
// so the TLS calls never see the socket. Keep-alive is on.
//
// Routes (GET): /items/<id> 200 "item <id>\n" with Content-Length; /error 500; anything else 404.
"use strict";

const fs = require("fs");
const https = require("https");

const [certPath, keyPath] = process.argv.slice(2);
if (!certPath || !keyPath) {
  process.stderr.write("usage: node node_https.js CERT KEY\n");
  process.exit(2);
}

function reply(res, status, body) {
  res.writeHead(status, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

const server = https.createServer(
  { cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath) },
  (req, res) => {
    req.resume(); // drain any body
    const path = new URL(req.url, "https://localhost").pathname;
    if (path.startsWith("/items/")) {
      reply(res, 200, `item ${path.slice("/items/".length)}\n`);
    } else if (path === "/error") {
      reply(res, 500, "boom\n");
    } else {
      reply(res, 404, "not found\n");
    }
  },
);
server.keepAliveTimeout = 60000; // an idle test connection must not be closed between requests

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
