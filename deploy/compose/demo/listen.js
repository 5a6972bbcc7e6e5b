// Preloaded with `node -r ./listen.js chain_node.js ...`: the test server listens on 127.0.0.1 and a free
// port; in a container it must listen on all addresses and $PORT, so other services reach it by name.
"use strict";

const net = require("net");

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
  if (port === 0 && host === "127.0.0.1") {
    return listen.call(this, Number(process.env.PORT), "0.0.0.0", ...rest);
  }
  return listen.call(this, port, host, ...rest);
};
