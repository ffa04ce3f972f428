// Connects the way the seed's React hook (useWebSocket.ts) does and prints one JSON line
// per thing that happens: {"event": name, "data": ...}.
// Usage: node seed_client.js URL TOKEN [transport] [more,events,to,print]
const { io } = require("socket.io-client");

const [url, token, transport, more] = process.argv.slice(2);
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
const names = ["connected", "booking_created", "booking_updated", "booking_deleted", "error"];
for (const name of names.concat((more || "").split(",").filter(Boolean))) {
  socket.on(name, (data) => print(name, data));
}
process.stdin.on("end", () => { socket.disconnect(); process.exit(0); });
process.stdin.resume();
