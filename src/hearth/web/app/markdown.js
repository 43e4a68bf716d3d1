// Model and user text to safe HTML: marked for markdown, highlight.js for code, DOMPurify last.
// Raw HTML in the text is shown as text, and images as links: a reply never loads anything.

import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.module.js";
import hljs from "../vendor/highlight.min.js";

function escapeHTML(text) {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html({ text }) {
      return escapeHTML(text);
    },
    image({ href, text }) {
      return `<a href="${escapeHTML(href)}">${escapeHTML(text || href)}</a>`;
    },
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s+/)[0];
      const known = language && hljs.getLanguage(language);
      const highlighted = known
        ? hljs.highlight(text, { language, ignoreIllegals: true }).value
        : hljs.highlightAuto(text).value;
      const label = known ? escapeHTML(language) : "";
      return `<pre data-language="${label}"><code class="hljs">${highlighted}</code></pre>`;
    },
  },
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const PURIFY = {
  // Styles would be refused by the page's CSP anyway (and logged); forms and media have no place.
  FORBID_ATTR: ["style"],
  FORBID_TAGS: ["style", "form", "input", "button", "img", "video", "audio", "iframe", "svg"],
};

export function renderMarkdown(text) {
  return DOMPurify.sanitize(marked.parse(text), PURIFY);
}
