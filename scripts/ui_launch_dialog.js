// Screenshot of the Dagster UI's launch dialog for sa1b_features_fixed with every partition selected, to see
// that partition keys stay distinguishable there (run by hand; not part of `make test`).
//   npm install --prefix /tmp/uicheck puppeteer-core @sparticuz/chromium   (or Debian's chromium: apt-get install chromium)
//   make demo && DAGSTER_HOME=$PWD/demo_home .venv/bin/dg dev -h 127.0.0.1 -p 3000 &
//   NODE_PATH=/tmp/uicheck/node_modules node scripts/ui_launch_dialog.js http://127.0.0.1:3000 /tmp/launch_dialog.png
const fs = require("fs");
const puppeteer = require("puppeteer-core");

async function launch() {
  // Debian's Chromium renders Dagster's UI; @sparticuz/chromium's single-process build left it blank here.
  if (fs.existsSync("/usr/bin/chromium")) {
    return puppeteer.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox", "--headless=new"],
      defaultViewport: { width: 1400, height: 1000 } });
  }
  const chromium = require("@sparticuz/chromium");
  return puppeteer.launch({ args: chromium.args, executablePath: await chromium.executablePath(), headless: true,
    defaultViewport: { width: 1400, height: 1000 } });
}

const [base = "http://127.0.0.1:3000", out = "/tmp/launch_dialog.png"] = process.argv.slice(2);

async function clickText(page, selector, text) {
  const handles = await page.$$(selector);
  for (const h of handles) {
    const t = await page.evaluate((el) => el.textContent.trim(), h);
    if (t === text || t.startsWith(text)) {
      await h.click();
      return true;
    }
  }
  return false;
}

(async () => {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.goto(`${base}/assets/sa1b_features_fixed`, { waitUntil: "networkidle2", timeout: 120000 });
    await new Promise((r) => setTimeout(r, 2000));
    if (await clickText(page, "button", "Skip")) await new Promise((r) => setTimeout(r, 1000)); // first-visit dialog
    if (!(await clickText(page, "button", "Materialize"))) throw new Error("no Materialize button");
    await new Promise((r) => setTimeout(r, 3000));
    await clickText(page, '[role="dialog"] button', "All"); // select every partition: their chips
    await new Promise((r) => setTimeout(r, 2000));
    const dialog = await page.$('[role="dialog"]');
    const text = dialog ? await page.evaluate((el) => el.innerText, dialog) : "";
    await page.screenshot({ path: out, fullPage: false });
    console.log(JSON.stringify({ screenshot: out, dialogText: text.slice(0, 1500) }, null, 1));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
