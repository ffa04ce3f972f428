// Connects the way the seed's React hook (useWebSocket.ts) does and prints one JSON line
// per thing that happens: {"event": name, "data": ...}. Usage: node seed_client.js URL TOKEN [transport]
const { io } = require("socket.io-client");

const [url, token, transport] = process.argv.slice(2);
const print = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + "\n");

const socket = io(`${url}/notifications`, {
  auth: { token },
  transports: [transport || "websocket"],
  reconnection: true,
  reconnectionAttempts: 5,
  reconnectionDelay: 1000,
  reconnectionDelayMax: 5000,
});

socket.on("connect", () => print("connect", null));
socket.on("disconnect", (reason) => print("disconnect", reason));
socket.on("connect_error", (error) => print("connect_error", error.message));
// Every event the server emits, by name: `connected`, `booking_created`, an attached
// source's `payment_created`, `error`, ...
socket.onAny((name, data) => print(name, data));
process.stdin.on("end", () => { socket.disconnect(); process.exit(0); });
process.stdin.resume();
