// The benchmarks' HTTP receiver: answers 204 to a POST on any path (201 with
// RECEIVER_STATUS=201), recording (data.id of a JSON body, arrival time in s) when
// RECEIVER_RECORD=1. GET /stats returns and clears the records; GET /count returns
// and clears how many POSTs arrived. Node's HTTP server, so the receiver is not the
// bottleneck of a Python client. Usage: node receiver.js PORT
"use strict";
const http = require("http");

const status = Number(process.env.RECEIVER_STATUS || 204);
const record = process.env.RECEIVER_RECORD === "1";
let records = [];
let count = 0;

const server = http.createServer((req, res) => {
  if (req.method === "POST") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      count += 1;
      if (record) {
        const now = Date.now() / 1000;
        try {
          records.push([JSON.parse(Buffer.concat(chunks)).data.id, now]);
        } catch (e) {
          records.push(["", now]);
        }
      }
      res.writeHead(status, status === 201 ? { Location: "/m/1" } : {});
      res.end();
    });
    return;
  }
  let body;
  if (req.url === "/count") {
    body = JSON.stringify(count);
    count = 0;
  } else {
    body = JSON.stringify(records);
    records = [];
  }
  res.writeHead(200, { "content-type": "application/json" });
  res.end(body);
});
server.keepAliveTimeout = 60000;
server.listen(Number(process.argv[2]), "127.0.0.1");
