"""Debian's Chromium driven by Playwright (browser downloads are not possible here)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator

CHROMIUM = os.environ.get("SPARK_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.asynccontextmanager
async def chromium_page(width: int = 1280, height: int = 900) -> AsyncIterator:
    """A fresh page in a headless Chromium, closed afterwards."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = await browser.new_context(viewport={"width": width, "height": height})
            page = await context.new_page()
            yield page
        finally:
            await browser.close()
