// p3lab preload (node --require): keep P3 Protocol's own server on loopback without changing its source.
// server/index.ts hard-codes HOST = '0.0.0.0'; every TCP listen on a wildcard (or on no) address is moved to
// 127.0.0.1. Unix-socket and explicit non-wildcard listens are left alone. Nothing else is changed.
'use strict';
const net = require('net');

const WILDCARD = new Set(['0.0.0.0', '::', '', undefined, null]);
const LOOPBACK = '127.0.0.1';
const isPort = (v) => typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));
const original = net.Server.prototype.listen;

net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (first && typeof first === 'object' && !Array.isArray(first) && first.path === undefined
      && first.handle === undefined && first._handle === undefined && first.fd === undefined) {
    if (WILDCARD.has(first.host)) args[0] = Object.assign({}, first, { host: LOOPBACK });
  } else if (isPort(first)) {
    if (typeof args[1] === 'string' || args[1] === null || args[1] === undefined) {
      if (WILDCARD.has(args[1])) args[1] = LOOPBACK;
    } else {
      args.splice(1, 0, LOOPBACK); // listen(port[, backlog][, cb]) → listen(port, host, ...)
    }
  } else if (first === undefined || typeof first === 'function') {
    args.unshift(0, LOOPBACK); // listen([cb]): a random port, on loopback
  }
  return original.apply(this, args);
};
