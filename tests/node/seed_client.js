// Connects the way the seed's React hook (useWebSocket.ts) does and prints one JSON line
// per thing that happens: {"event": name, "data": ...}; "connect" carries socket.recovered.
// Usage: node seed_client.js URL TOKEN [websocket|polling|default]; "default" is the
// client's own default (long-polling first, then an upgrade to websocket).
// Lines on stdin: "drop" closes the Engine.IO connection as a network drop would (the
// client then reconnects by itself); "pid P" / "offset O" replace what the client will send
// when it reconnects (forged recovery); "state" prints them. End of stdin disconnects and exits.
const { io } = require("socket.io-client");
const readline = require("readline");

const [url, token, transport] = process.argv.slice(2);
const print = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + "\n");

const socket = io(`${url}/notifications`, {
  auth: { token },
  transports: transport === "default" ? ["polling", "websocket"] : [transport || "websocket"],
  reconnection: true,
  reconnectionAttempts: 5,
  reconnectionDelay: 1000,
  reconnectionDelayMax: 5000,
});

socket.on("connect", () => print("connect", { recovered: socket.recovered === true }));
socket.on("disconnect", (reason) => print("disconnect", reason));
socket.on("connect_error", (error) => print("connect_error", error.message));
socket.io.on("open", () => socket.io.engine.on("upgrade", (t) => print("upgrade", t.name)));
// Every event the server emits, by name: `connected`, `booking_created`, an attached
// source's `payment_created`, `error`, ...
socket.onAny((name, data) => print(name, data));
const commands = readline.createInterface({ input: process.stdin });
commands.on("line", (line) => {
  const [command, value] = line.trim().split(" ");
  if (command === "drop") socket.io.engine.close();
  if (command === "pid") socket._pid = value;
  if (command === "offset") socket._lastOffset = value;
  if (command === "state") print("state", { pid: socket._pid, offset: socket._lastOffset });
});
commands.on("close", () => { socket.disconnect(); process.exit(0); });
