// One load generator for Relay's /ws, Relay's Socket.IO endpoint and the seed baseline.
// Usage: node loadgen.js CONFIG.json, where CONFIG is {"mode": "ws"|"socketio", "url", "tokens": [...],
// "concurrency"}. Opens one connection per token (socket.io-client the way the seed's hook does,
// plus forceNew so each is its own connection), prints {"ready": n, "failed": k}, then answers
// stdin lines: "count" -> {"count": n}, "dump" -> {"records": [[bookingId, receivedAtMs], ...]}
// (and forgets them), "take N" -> the oldest N records (forgotten), "stats" -> {"count": n, "closed": k} (connections closed after they were ready),
// "quit" -> closes everything and exits. Times are wall-clock milliseconds. With "tag": true in CONFIG
// each /ws record also carries the client's index: [bookingId, receivedAtMs, clientIndex].
"use strict";
const fs = require("fs");
const readline = require("readline");
const { performance } = require("perf_hooks");
const WebSocket = require("ws");
const { io } = require("socket.io-client");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const now = () => performance.timeOrigin + performance.now();
let records = [];
let closed = 0;
const sockets = [];
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function openWs(token, index) {
  return new Promise((resolve, reject) => {
    let ready = false;
    const ws = new WebSocket(`${cfg.url.replace(/^http/, "ws")}/ws?token=${token}`, {
      perMessageDeflate: cfg.deflate !== false,
    });
    sockets.push(ws);
    ws.on("message", (raw) => {
      const m = JSON.parse(raw);
      if (m.type === "event") records.push(cfg.tag ? [m.data.id, now(), index] : [m.data.id, now()]);
      else if (m.type === "connected") {
        ready = true;
        resolve();
      }
    });
    ws.on("error", reject);
    ws.on("close", (code) => {
      if (ready) closed++;
      reject(new Error(`closed ${code}`));
    });
  });
}

function openSocketIo(token) {
  return new Promise((resolve, reject) => {
    const socket = io(`${cfg.url}/notifications`, {
      auth: { token },
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
    });
    sockets.push(socket);
    const record = (data) => records.push([data.id, now()]);
    socket.on("booking_created", record);
    socket.on("booking_updated", record);
    socket.on("booking_deleted", record);
    socket.on("connected", resolve);
    socket.on("connect_error", reject);
  });
}

async function main() {
  const open = cfg.mode === "ws" ? openWs : openSocketIo;
  let next = 0, ready = 0, failed = 0;
  async function worker() {
    while (next < cfg.tokens.length) {
      const index = next++;
      const token = cfg.tokens[index];
      try {
        await open(token, index);
        ready++;
      } catch (e) {
        failed++;
      }
    }
  }
  await Promise.all(Array.from({ length: cfg.concurrency || 50 }, worker));
  out({ ready, failed });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (line === "count") out({ count: records.length });
    else if (line === "stats") out({ count: records.length, closed });
    else if (line.startsWith("take ")) out({ records: records.splice(0, Number(line.slice(5))) });
    else if (line === "dump") {
      out({ records });
      records = [];
    } else if (line === "quit") {
      for (const s of sockets) (s.terminate ? s.terminate() : s.close());
      process.exit(0);
    }
  });
}

main();
