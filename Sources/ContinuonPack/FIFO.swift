/// A first-in first-out queue on an array: amortized O(1) append and removal at the front.
package struct FIFO<Element> {
    package init() {}

    private var items: [Element] = []
    private var head = 0

    package var count: Int { items.count - head }
    package var first: Element? { head < items.count ? items[head] : nil }

    package mutating func append(_ item: Element) { items.append(item) }

    package mutating func popFirst() -> Element? {
        guard head < items.count else { return nil }
        let item = items[head]
        head += 1
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return item
    }

    package mutating func removeAll(where predicate: (Element) -> Bool) {
        items = Array(items[head...].filter { !predicate($0) })
        head = 0
    }
}
