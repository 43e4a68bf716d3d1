// The models view: the store (/api/tags), what is loaded (/api/ps), pull with progress, delete,
// load and unload (/admin/models/*).
import { html, useState } from "./html.js";
import { deleteJSON, postJSON, streamPull } from "./api.js";
import { bytes, until } from "./format.js";

function PullForm({ onPulled, onError }) {
  const [name, setName] = useState("");
  const [progress, setProgress] = useState(null);
  const pulling = progress !== null && !progress.done;
  const pull = async () => {
    const model = name.trim();
    if (!model || pulling) return;
    setProgress({ status: "Starting…", percent: 0, done: false });
    try {
      for await (const step of streamPull(model)) {
        const percent = step.total ? Math.floor((100 * (step.completed || 0)) / step.total) : null;
        setProgress((before) => ({
          status: step.status,
          percent: percent ?? (step.status === "success" ? 100 : before.percent),
          done: step.status === "success",
        }));
      }
      setProgress({ status: `Pulled ${model}`, percent: 100, done: true });
      setName("");
      onPulled(model);
    } catch (error) {
      setProgress(null);
      onError(error);
    }
  };
  return html`<section class="card pull" aria-label="Pull a model">
    <h2>Pull a model</h2>
    <form class="row" onSubmit=${(e) => {
      e.preventDefault();
      pull();
    }}>
      <input type="text" aria-label="Model to pull" placeholder="hf.co/owner/repo:Q4_K_M"
        value=${name} onInput=${(e) => setName(e.target.value)} disabled=${pulling} />
      <button type="submit" class="primary" aria-label="Pull" disabled=${pulling || !name.trim()}>
        Pull</button>
    </form>
    ${progress && html`<div class="progress">
      <progress max="100" value=${progress.percent ?? undefined} aria-label="Pull progress" />
      <span class="progress-text" role="status">
        ${progress.percent != null ? `${progress.percent}% · ` : ""}${progress.status}</span>
    </div>`}
  </section>`;
}

export function ModelsView({ tags, running, onChanged, onError }) {
  const [busy, setBusy] = useState(null);
  const loaded = new Map(running.map((m) => [m.name, m]));
  const act = async (name, action) => {
    setBusy(name);
    try {
      await action();
    } catch (error) {
      onError(error);
    } finally {
      setBusy(null);
      onChanged();
    }
  };
  return html`<div class="models-view">
    <${PullForm} onPulled=${onChanged} onError=${onError} />
    <section class="card" aria-label="Models">
      <h2>Models</h2>
      <table class="models-table">
        <thead><tr><th>Name</th><th>Size</th><th>Quantization</th><th>State</th><th></th></tr>
        </thead>
        <tbody>
          ${tags.map((tag) => {
            const entry = loaded.get(tag.name);
            return html`<tr key=${tag.name} data-model=${tag.name}>
              <td class="name">${tag.name}</td>
              <td>${bytes(tag.size)}</td>
              <td>${(tag.details && tag.details.quantization_level) || "–"}</td>
              <td>${entry
                ? html`<span class="badge loaded">Loaded</span>
                    <span class="muted"> ${until(entry.expires_at)}</span>`
                : html`<span class="muted">Not loaded</span>`}</td>
              <td><div class="row-actions">
                ${entry
                  ? html`<button type="button" class="ghost small" disabled=${busy === tag.name}
                      aria-label=${`Unload ${tag.name}`}
                      onClick=${() => act(tag.name, () =>
                        postJSON("/admin/models/unload", { model: tag.name }))}>Unload</button>`
                  : html`<button type="button" class="ghost small" disabled=${busy === tag.name}
                      aria-label=${`Load ${tag.name}`}
                      onClick=${() => act(tag.name, () =>
                        postJSON("/admin/models/load", { model: tag.name }))}>Load</button>`}
                <button type="button" class="ghost small danger" disabled=${busy === tag.name}
                  aria-label=${`Delete ${tag.name}`}
                  onClick=${() => {
                    if (confirm(`Delete ${tag.name} from the store?`)) {
                      act(tag.name, () => deleteJSON("/api/delete", { model: tag.name }));
                    }
                  }}>Delete</button>
              </div></td>
            </tr>`;
          })}
        </tbody>
      </table>
    </section>
  </div>`;
}
