// Numbers as a person reads them.

export function bytes(size) {
  if (!Number.isFinite(size) || size <= 0) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = size;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function until(iso) {
  if (!iso) return "until unloaded";
  const when = new Date(iso);
  if (when.getFullYear() > 9000) return "until unloaded";
  return `until ${when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
}

export function figures(figures) {
  if (!figures) return "";
  const parts = [`${figures.tokens} tokens`];
  if (figures.tokensPerSecond) parts.push(`${figures.tokensPerSecond.toFixed(1)} tok/s`);
  if (figures.ttftMs != null) parts.push(`${Math.round(figures.ttftMs)} ms to first token`);
  parts.push(`${figures.cached} cached prompt tokens`);
  return parts.join(" · ");
}
