() => {
  // Ctrl+Enter (Cmd+Enter on macOS) in a prompt box presses that tab's Generate button, as in A1111.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const box = event.target.closest("[id$='_prompt'], [id$='_neg_prompt']");
    if (!box) return;
    const tab = box.id.replace(/_(neg_)?prompt$/, "");
    const button = document.getElementById(`${tab}_generate`);
    if (button) {
      event.preventDefault();
      button.click();
    }
  });
}
