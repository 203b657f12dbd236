// Undo/redo of the working mask's steps (points, box, strokes, candidate choice, discard) and
// of the server writes (accept, edit, delete). Entries:
//   {kind: "work", before, after}                 working-mask snapshots (immutable objects)
//   {kind: "accept", work, body, record}          undo deletes the mask, redo posts it again
//   {kind: "edit", work, before, after}           mask records before / after a PATCH
//   {kind: "delete", record}                      undo posts it again, redo deletes it
// The caller performs an entry, then calls commit(redo) to move it across the stacks (a failed
// server write leaves the stacks as they were).

export class History {
  constructor(limit = 500) {
    this.limit = limit;
    this.clear();
  }

  clear() {
    this.done = [];
    this.undone = [];
  }

  push(entry) {
    this.done.push(entry);
    if (this.done.length > this.limit) this.done.shift();
    this.undone = [];
  }

  undoEntry() {
    return this.done[this.done.length - 1] ?? null;
  }

  redoEntry() {
    return this.undone[this.undone.length - 1] ?? null;
  }

  commit(redo) {
    if (redo) this.done.push(this.undone.pop());
    else this.undone.push(this.done.pop());
  }
}
