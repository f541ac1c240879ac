package kagi.conf;

abstract class Shape {
    abstract short area();

    short twice() {
        return (short) (area() * 2);
    }
}
