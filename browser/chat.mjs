// The browser scenario of browser_test.go: the demo page in Debian's
// Chromium, driven by playwright-core. It prints RESTART and waits for OK
// on stdin when DMB is to be restarted (the test has the backend say
// "said while DMB restarted" while DMB is down); it exits non-zero on any
// failure.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import readline from "node:readline";
import path from "node:path";

const url = process.env.DMB_URL;
const authURL = process.env.DMB_AUTH_URL;
const artifacts = process.env.DMB_ARTIFACTS;
const wait = { timeout: 20000 };

const input = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function restartDMB() {
  console.log("RESTART");
  const { value } = await input.next();
  assert.equal(value, "OK");
}

function step(name) {
  console.log(`step: ${name}`);
}

// openChat opens the demo page as name; with blockWebSocket, every
// WebSocket of the page fails before it opens (its upgrade is refused, as
// by a proxy that lets none through), and window.wsTries counts them.
async function openChat(browser, name, { blockWebSocket = false } = {}) {
  const context = await browser.newContext();
  if (blockWebSocket) {
    await context.addInitScript(() => {
      const Native = window.WebSocket;
      window.wsTries = 0;
      window.WebSocket = class extends Native {
        constructor(url, protocols) {
          window.wsTries++;
          // DMB answers 404 to an upgrade there.
          super(String(url).replace("/ws/", "/blocked/"), protocols);
        }
      };
    });
  }
  const page = await context.newPage();
  page.on("pageerror", (err) => console.log(`page error (${name}): ${err.message}`));
  await page.goto(url + "/");
  await page.waitForFunction(() => document.querySelector("#status")?.textContent.trim() === "open", null, wait);
  await page.fill("#name", name);
  await page.dispatchEvent("#name", "change");
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.click("#send");
}

async function sees(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .line[data-kind="chat"]')].some((l) => l.textContent.includes(t)),
    text,
    wait,
  );
}

async function online(page, names) {
  await page.waitForFunction(
    (want) => want.every((n) => document.querySelector("#online")?.textContent.includes(n)),
    names,
    wait,
  );
}

async function joinRoom(page, room) {
  await page.fill("#room", room);
  await page.click("#join");
}

// inRoom waits until the page shows itself in room with these members.
async function inRoom(page, room, names) {
  await page.waitForFunction(
    ([r, want]) => {
      const li = document.querySelector(`#rooms li.in[data-room="${r}"]`);
      return li && want.every((n) => li.querySelector(".members")?.textContent.includes(n));
    },
    [room, names],
    wait,
  );
}

async function hasLine(page, text) {
  return page.evaluate(
    (t) => [...document.querySelectorAll('#messages .line[data-kind="chat"]')].some((l) => l.textContent.includes(t)),
    text,
  );
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  step("two pages chat through DMB and the demo backend");
  const ann = await openChat(browser, "ann");
  const bob = await openChat(browser, "bob");
  await online(ann, ["ann", "bob"]);
  await online(bob, ["ann", "bob"]);
  await say(ann, "hello from ann");
  await sees(bob, "hello from ann");
  await say(bob, "hi ann");
  await sees(ann, "hi ann");
  await ann.screenshot({ path: path.join(artifacts, "chat.png"), fullPage: true });

  step("rooms: members get each other's lines, a page outside does not");
  const cy = await openChat(browser, "cy");
  await joinRoom(ann, "lobby");
  await joinRoom(bob, "lobby");
  await inRoom(ann, "lobby", ["ann", "bob"]);
  await inRoom(bob, "lobby", ["ann", "bob"]);
  await ann.selectOption("#to", "lobby");
  await say(ann, "just for the lobby");
  await bob.waitForSelector('#messages .line[data-room="lobby"]', wait);
  await sees(bob, "just for the lobby");
  await bob.selectOption("#to", "lobby");
  await say(bob, "lobby reply");
  await sees(ann, "lobby reply");
  await ann.selectOption("#to", "");
  await say(ann, "to everyone again");
  // The broadcast was published after the room lines: once cy has it, it
  // would have had them.
  await sees(cy, "to everyone again");
  assert.equal(await hasLine(cy, "just for the lobby"), false, "a page outside the room got its line");
  assert.equal(await hasLine(cy, "lobby reply"), false, "a page outside the room got its line");
  await ann.screenshot({ path: path.join(artifacts, "rooms.png"), fullPage: true });
  await cy.context().close();

  step("request() gets its reply");
  const reply = await ann.evaluate(async () => {
    const { DMB } = await import("/dmb.js");
    const c = new DMB({ service: "chat" });
    await new Promise((resolve) => c.on("connected", resolve));
    try {
      return await c.request({ kind: "time" }, { timeout: 5000 });
    } finally {
      c.close();
    }
  });
  assert.equal(reply.kind, "time");
  assert.ok(!Number.isNaN(Date.parse(reply.now)), `reply.now = ${reply.now}`);

  step("a page whose WebSockets are refused chats over the HTTP fallback");
  const dan = await openChat(browser, "dan", { blockWebSocket: true });
  await dan.waitForFunction(() => document.querySelector("#transport")?.textContent.includes("sse"), null, wait);
  assert.equal(await dan.evaluate(() => window.dmb.transport), "sse");
  assert.ok((await dan.evaluate(() => window.wsTries)) >= 2, "the page tried WebSockets first");
  assert.match(await ann.textContent("#transport"), /websocket/);
  await online(ann, ["ann", "bob", "dan"]);
  await online(dan, ["ann", "bob", "dan"]);
  await say(dan, "hello over the fallback");
  await sees(ann, "hello over the fallback");
  await sees(bob, "hello over the fallback");
  await say(ann, "hi dan");
  await sees(dan, "hi dan");
  await dan.waitForSelector('#messages .line.mine .mark.ok', wait);
  await dan.screenshot({ path: path.join(artifacts, "fallback.png"), fullPage: true });

  step("DMB restarts mid-session; the pages resume their sessions with nothing missed");
  const pages = [ann, bob, dan];
  const cids = await Promise.all(pages.map((page) => page.textContent("#cid")));
  // While DMB is down, the backend says something: the pages get it when
  // they resume, dan over the fallback.
  await restartDMB();
  for (const [i, page] of pages.entries()) {
    await page.waitForFunction(
      (cid) => document.querySelector("#status")?.textContent.trim() === "open" && document.querySelector("#cid")?.textContent === cid,
      cids[i],
      wait,
    );
    await sees(page, "said while DMB restarted");
    await page.waitForFunction(() => document.querySelector("#messages")?.textContent.includes("nothing missed"), null, wait);
  }
  await online(ann, ["ann", "bob", "dan"]);
  assert.equal(await dan.evaluate(() => window.dmb.transport), "sse");
  // The pages are still in their rooms: the sessions kept them.
  await inRoom(ann, "lobby", ["ann", "bob"]);
  await inRoom(bob, "lobby", ["ann", "bob"]);
  await bob.selectOption("#to", "");
  await say(bob, "still here after the restart");
  await sees(ann, "still here after the restart");
  await sees(dan, "still here after the restart");
  await say(dan, "dan too");
  await sees(bob, "dan too");
  await ann.screenshot({ path: path.join(artifacts, "after-restart.png"), fullPage: true });

  step("a page with a bad token sees the auth failure");
  const bad = await (await browser.newContext()).newPage();
  await bad.goto(authURL + "/?token=not-a-valid-token");
  await bad.waitForFunction(() => document.querySelector("#status")?.textContent.trim() === "closed", null, wait);
  const shown = await bad.textContent("body");
  assert.match(shown, /4001/, "the page shows the 4001 close");
  await bad.screenshot({ path: path.join(artifacts, "bad-token.png"), fullPage: true });
  step("done");
} finally {
  await browser.close();
  process.stdin.destroy();
}
