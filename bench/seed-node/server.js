// The seed guide's design (SEED-GUIDE.md), without the NestJS scaffolding:
// PostgresListenerService (pg Client, LISTEN on the three channels, EventEmitter hand-off)
// and NotificationsGateway (socket.io namespace /notifications, JWT from auth.token or the
// Authorization header, room merchant:<id>, `connected`, room emit per notification).
// Env: DATABASE_URL, JWT_SECRET, PORT.
"use strict";
const http = require("http");
const { EventEmitter } = require("events");
const { Client } = require("pg");
const { Server } = require("socket.io");
const jwt = require("jsonwebtoken");

const eventEmitter = new EventEmitter();

// --- PostgresListenerService -------------------------------------------------
let client;
let reconnectAttempts = 0;
const maxReconnectAttempts = 10;
const reconnectDelay = 5000;

async function connect() {
  try {
    client = new Client({ connectionString: process.env.DATABASE_URL });
    client.on("notification", (msg) => handleNotification(msg));
    client.on("error", (err) => {
      console.error("PostgreSQL client error:", err);
      scheduleReconnect();
    });
    await client.connect();
    await client.query("LISTEN booking_created");
    await client.query("LISTEN booking_updated");
    await client.query("LISTEN booking_deleted");
    reconnectAttempts = 0;
    console.log("listening");
  } catch (error) {
    console.error("Failed to connect to PostgreSQL:", error);
    scheduleReconnect();
  }
}

function scheduleReconnect() {
  if (reconnectAttempts >= maxReconnectAttempts) return;
  reconnectAttempts++;
  setTimeout(connect, reconnectDelay);
}

function handleNotification(msg) {
  try {
    const payload = JSON.parse(msg.payload);
    eventEmitter.emit(`postgres.${msg.channel}`, payload);
    eventEmitter.emit("notification.send", { channel: msg.channel, data: payload, merchantId: payload.merchantId });
  } catch (error) {
    console.error("Error handling notification:", error);
  }
}

// --- NotificationsGateway ----------------------------------------------------
const httpServer = http.createServer();
const io = new Server(httpServer, { cors: { origin: ["http://localhost:3001"], credentials: true } });
const server = io.of("/notifications");
const userSockets = new Map();

server.on("connection", (socket) => {
  try {
    const token = socket.handshake.auth.token || socket.handshake.headers.authorization?.split(" ")[1];
    if (!token) {
      socket.disconnect();
      return;
    }
    const payload = jwt.verify(token, process.env.JWT_SECRET);
    const userId = payload.sub;
    const merchantId = payload.merchantId;
    socket.data.userId = userId;
    socket.data.merchantId = merchantId;
    socket.join(`merchant:${merchantId}`);
    if (!userSockets.has(userId)) userSockets.set(userId, new Set());
    userSockets.get(userId).add(socket.id);
    socket.emit("connected", { userId, merchantId });
  } catch (error) {
    socket.disconnect();
    return;
  }
  socket.on("disconnect", () => {
    const userId = socket.data.userId;
    if (userId && userSockets.has(userId)) {
      userSockets.get(userId).delete(socket.id);
      if (userSockets.get(userId).size === 0) userSockets.delete(userId);
    }
  });
  socket.on("subscribe", (data) => {
    socket.join(data.channel);
    socket.emit("subscribed", { channel: data.channel });
  });
  socket.on("unsubscribe", (data) => {
    socket.leave(data.channel);
    socket.emit("unsubscribed", { channel: data.channel });
  });
});

eventEmitter.on("notification.send", ({ channel, data, merchantId }) => {
  server.to(`merchant:${merchantId}`).emit(channel, data);
});

httpServer.listen(Number(process.env.PORT), "127.0.0.1", connect);
